"""A private Docker engine for the test suite, and locally made base images.

There is no image registry here, and other engineers (or other test runs) may run their own
`dockerd` on this machine. So the suite starts its *own* engine (Debian's `docker.io`,
installed by `scripts/setup.sh test`): its own `--data-root`, `--exec-root`, socket and
pidfile, `--bridge=none --iptables=false` (containers use `--network host`, so all traffic
stays on loopback). It never touches another engine's files or processes.

- `dockerd` (session-scoped fixture) yields a `DockerEngine` (`.socket`, `.host`, `.env`
  with DOCKER_HOST, `.cli(...)`). Import it into the conftest of the tests that need it;
  every importer in a run shares one engine (reference-counted), so two modules (or two
  conftests) in one run start one dockerd.
- The data root is kept between runs under the cache directory (`~/.cache/streamspace/`,
  or `$STREAMSPACE_CACHE_DIR`): images and build layers survive, so a second run is fast.
  A second concurrent run in the same checkout gets a throw-away root instead.
- Start-up is robust to a run killed halfway: a dockerd of ours still running (found by its
  pidfile *and* its command line naming our data root) is stopped, a stale pidfile or socket
  removed, and containers, volumes and networks a killed run left behind are removed.
- Teardown (also when tests fail) removes every container, volume and network on the engine
  and the dangling images (earlier builds of rebuilt test tags), stops dockerd and checks
  that no process of it (containerd, shims) is left.
- `base_image(engine, include=...)` gives a `debootstrap --variant=minbase bookworm` image,
  `docker import`ed from a tarball cached outside the repository (built once, ~25 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cache import cache_dir
from tests.support.processes import REPO, alive, wait_gone

DEBIAN_MIRROR = os.environ.get("STREAMSPACE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def _require(command: str, package: str) -> str:
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if not found:
        # A missing prerequisite fails the test (never a skip counted as a pass).
        raise RuntimeError(f"{command} is not installed (Debian package {package}; "
                           "`make setup-test` installs it as root)")
    return found


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pids_mentioning(marker: str) -> set[int]:
    """Live processes whose command line names `marker` (our exec root): containerd, shims."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if any(marker in arg for arg in _cmdline(int(entry.name))) and alive(int(entry.name)):
                found.add(int(entry.name))
    return found


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class DockerEngine:
    """One private dockerd: `data_root` (images, layers), `run_dir` (exec root, socket)."""

    data_root: Path
    run_dir: Path
    persistent: bool = True
    proc: subprocess.Popen | None = None
    _lock: object = None

    @property
    def exec_root(self) -> Path:
        return self.run_dir / "exec"

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for the `docker` CLI (or any Engine API client) to use this engine."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.run_dir / "cli")}

    # -- talking to it --------------------------------------------------------------------

    def api(self, method: str, path: str, timeout: float = 30.0):
        """One Engine API request over the socket: (status, decoded JSON or text)."""
        conn = _UnixHTTPConnection(str(self.socket), timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return resp.status, body.decode(errors="replace")

    def ping(self) -> bool:
        try:
            status, body = self.api("GET", "/_ping", timeout=2.0)
        except OSError:
            return False
        return status == 200 and body == "OK"

    def cli(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 600.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run the real `docker` CLI against this engine (output captured as text)."""
        docker = _require("docker", "docker.io")
        result = subprocess.run([docker, *args], env={**self.env, **(env or {})}, input=input,
                                capture_output=True, timeout=timeout)
        out = subprocess.CompletedProcess(result.args, result.returncode,
                                          result.stdout.decode(errors="replace"),
                                          result.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed ({out.returncode}): "
                                 f"{out.stderr[-2000:]}{out.stdout[-1000:]}")
        return out

    def containers(self) -> list[dict]:
        status, body = self.api("GET", "/containers/json?all=1")
        assert status == 200, body
        return body

    def image_exists(self, ref: str) -> bool:
        status, _ = self.api("GET", f"/images/{ref}/json")
        return status == 200

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        dockerd = _require("dockerd", "docker.io")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        log = open(self.log_path, "ab")  # noqa: SIM115 - dockerd owns it
        argv = [dockerd, "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "-H", self.host, "--pidfile", str(self.pidfile), "--bridge=none",
                "--iptables=false", "--ip-masq=false", "--storage-driver=overlay2"]
        # Its own session: a Ctrl-C of pytest reaches pytest, which then stops us cleanly.
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill_leftovers()
                raise RuntimeError(f"dockerd did not answer /_ping on {self.socket}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)  # blocking test helper, not reactor code
        self.remove_everything()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _own_dockerd(self, pid: int) -> bool:
        return str(self.data_root) in _cmdline(pid) and alive(pid)

    def _clear_stale(self) -> None:
        """A run killed halfway may have left its dockerd, pidfile or socket: clean up ours."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and self._own_dockerd(pid):
            if self.ping():
                self.remove_everything()
            _signal({pid}, signal.SIGTERM)
            if wait_gone({pid}, STOP_TIMEOUT):
                _signal({pid}, signal.SIGKILL)
                wait_gone({pid}, 10)
        self._kill_leftovers()
        self._unmount_ours()
        for stale in (self.pidfile, self.socket):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _kill_leftovers(self) -> None:
        """containerd and shims of *this* engine only (their command lines name our roots)."""
        left = _pids_mentioning(str(self.exec_root)) | _pids_mentioning(str(self.data_root))
        if left:
            _signal(left, signal.SIGTERM)
            if wait_gone(left, 15):
                _signal(left, signal.SIGKILL)
                wait_gone(left, 10)

    def _unmount_ours(self) -> None:
        """dockerd leaves mounts under its roots (the data root bound onto itself, a netns
        file); after it has stopped, detach those (and only those: paths under our roots)."""
        for point in sorted(set(self.mounts()), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True)

    def remove_everything(self) -> None:
        """Every container, volume and user network on this (private) engine is ours."""
        ids = [c["Id"] for c in self.containers()]
        if ids:
            self.cli("rm", "--force", "--volumes", *ids)
        self.cli("volume", "prune", "--force")
        self.cli("network", "prune", "--force")

    def leftovers(self) -> dict[str, list[str]]:
        """What is on the engine beyond images: empty after a clean test."""
        _, volumes = self.api("GET", "/volumes")
        _, networks = self.api("GET", "/networks")
        return {
            "containers": [c["Names"][0] for c in self.containers()],
            "volumes": [v["Name"] for v in (volumes or {}).get("Volumes") or []],
            "networks": [n["Name"] for n in networks or []
                         if n["Name"] not in ("host", "none", "bridge")],
        }

    def prune_dangling_images(self) -> None:
        """Images no tag names any more (an earlier build of a rebuilt test tag): dropped,
        so the kept data root does not grow with every change. Tagged images, and the
        layers they are built from (the build cache), stay."""
        self.cli("image", "prune", "--force")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None and self.ping():
                self.remove_everything()
                self.prune_dangling_images()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._kill_leftovers()
            self._unmount_ours()
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            left, mounted = self.processes(), self.mounts()
            if not self.persistent:
                shutil.rmtree(self.data_root, ignore_errors=True)
                shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        if left or mounted:  # the run's teardown fails: something of the engine stayed
            raise RuntimeError(f"dockerd left processes {sorted(left)} / mounts {mounted}")

    def mounts(self) -> list[str]:
        """Mount points under this engine's roots (none once it has stopped)."""
        roots = (str(self.data_root), str(self.run_dir))
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        return [p for p in points if any(p == r or p.startswith(r + "/") for r in roots)]

    def processes(self) -> set[int]:
        """Live processes of this engine (dockerd, containerd, shims)."""
        pids = _pids_mentioning(str(self.exec_root)) | _pids_mentioning(str(self.data_root))
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        return pids


def engine_for_checkout(repo: Path = REPO) -> DockerEngine:
    """The engine of this checkout: a persistent root keyed by the checkout's path, locked so
    that a second concurrent run (or another checkout) never shares it."""
    slot = hashlib.sha256(str(repo).encode()).hexdigest()[:10]
    base = cache_dir() / "dockerd" / slot
    base.mkdir(parents=True, exist_ok=True)
    lock = open(base / "lock", "w")  # noqa: SIM115 - held until the engine stops
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        # Another run of this checkout holds the persistent engine: use a throw-away one.
        tmp = Path(tempfile.mkdtemp(prefix=f"ssd-{slot}-", dir="/tmp"))
        return DockerEngine(data_root=tmp / "data", run_dir=tmp / "run", persistent=False)
    # exec root and socket under /tmp: unix socket paths must stay short (108 bytes).
    return DockerEngine(data_root=base / "data", run_dir=Path("/tmp") / f"ssd-{slot}",
                        _lock=lock)


# -- one engine per test run, however many modules ask for it -------------------------------

@dataclass
class _Shared:
    engine: DockerEngine | None = None
    users: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock)


_shared = _Shared()


@contextlib.contextmanager
def shared_engine() -> Iterator[DockerEngine]:
    with _shared.guard:
        if _shared.engine is None:
            engine = engine_for_checkout()
            engine.start()
            _shared.engine = engine
        _shared.users += 1
        engine = _shared.engine
    try:
        yield engine
    finally:
        with _shared.guard:
            _shared.users -= 1
            if _shared.users == 0:
                _shared.engine = None
                engine.stop()


def blocking(fn, *args):
    """Run slow blocking set-up in a thread while the test reactor (pytest-twisted) keeps
    serving whatever else runs (e.g. the suite's PostgreSQL child)."""
    import pytest_twisted
    from twisted.internet import threads

    return pytest_twisted.blockon(threads.deferToThread(fn, *args))


@pytest.fixture(scope="session")
def dockerd():
    """The run's private Docker engine (see the module docstring)."""
    stack = contextlib.ExitStack()
    engine = blocking(stack.enter_context, shared_engine())
    try:
        yield engine
    finally:
        blocking(stack.close)


# -- locally made base images --------------------------------------------------------------

def _cache_key(suite: str, include: Sequence[str]) -> str:
    spec = json.dumps({"suite": suite, "variant": "minbase", "include": sorted(include),
                       "mirror": DEBIAN_MIRROR})
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def debootstrap_tarball(include: Sequence[str] = (), suite: str = "bookworm") -> Path:
    """`debootstrap --variant=minbase SUITE` (+ `--include`) as a tarball in the cache,
    built once; concurrent callers (two runs, two engineers) wait on a file lock."""
    key = _cache_key(suite, include)
    folder = cache_dir() / "base"
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"debootstrap-{suite}-{key}.tar"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        debootstrap = _require("debootstrap", "debootstrap")
        work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=folder))
        try:
            root = work / "root"
            argv = [debootstrap, "--variant=minbase"]
            if include:
                argv.append("--include=" + ",".join(include))
            result = subprocess.run([*argv, suite, str(root), DEBIAN_MIRROR],
                                    capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({result.returncode}):\n"
                                   f"{(result.stdout + result.stderr)[-3000:]}")
            # Downloaded .debs and package lists are not part of an image.
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (root / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            partial = work / "base.tar"
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                           check=True, timeout=600)
            os.replace(partial, tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def base_image(engine: DockerEngine, include: Sequence[str] = (), suite: str = "bookworm",
               name: str = "streamspace-test-base") -> str:
    """A Debian base image on `engine` (imported from the cached tarball when missing).

    The tag names the tarball's contents, so a changed package list is a new image.
    """
    ref = f"{name}:{suite}-{_cache_key(suite, include)}"
    if not engine.image_exists(ref):
        tarball = debootstrap_tarball(include, suite)
        engine.cli("import", "--change", 'CMD ["/bin/bash"]', str(tarball), ref, timeout=900)
    return ref


def tiny_image(engine: DockerEngine, name: str = "streamspace-test-tiny:1",
               programs: Sequence[str] = ("sleep", "true", "false")) -> str:
    """A few-megabyte image of host binaries and their libraries (no debootstrap): for tests
    of the engine itself, e.g. a container that sleeps, or one that exits at once."""
    if engine.image_exists(name):
        return name
    files: set[Path] = set()
    for program in programs:
        binary = Path(shutil.which(program) or program).resolve()
        files.add(binary)
        ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
        for line in ldd.stdout.splitlines():
            for word in line.split():
                if word.startswith("/"):
                    files.add(Path(word))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for source in files:
            for path in {source, source.resolve()}:  # keep the loader's path and its target
                target = root / path.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    shutil.copy2(path.resolve(), target)
        (root / "bin").mkdir(exist_ok=True)
        for program in programs:
            link = root / "bin" / program
            if not link.exists():
                link.symlink_to(Path(shutil.which(program)).resolve())
        tar = subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                             capture_output=True, check=True).stdout
    engine.cli("import", "-", name, input=tar)
    return name
