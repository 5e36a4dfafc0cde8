"""The Docker platform in tests: the session image on the suite's dockerd, and a harness
that makes Docker drivers against it (also for the shared driver contract suite).

- `session_image(engine)`: deploy/session-images/ built the way operators build it
  (`docker build`), on a debootstrapped bookworm that already has packages.txt installed
  (tests/support/dockerd.py caches that tarball outside the repository), so the build needs
  no network and takes seconds once the tarball exists. The tag names the image's inputs:
  a changed Dockerfile, script or package list is a new image.
- `chromium_image(engine)`: Dockerfile.chromium on top of it (apt inside the build, over
  the host network); built once, then kept as a `docker save` tarball in the same cache,
  so a fresh engine loads it instead of building it again.
- `DockerHarness`: drivers with host networking (traffic stays on loopback) under one
  agent id per test; `template()` is a terminal that runs; `leftovers()`/`cleanup()` find
  and remove whatever of that agent id is still on the engine.
- Fixtures for any test module (import them, with `dockerd`, into its conftest or module):
  `docker_session_image` (per run) and `docker_harness` (per test; afterwards no
  container of its agent id may be left). The shared driver contract suite plugs the
  Docker driver in with them:

      driver = await docker_harness.started(capacity)   # discovery done, like an agent
      template = docker_harness.template()              # a SessionTemplate that runs
      # teardown: drivers shut down, everything of the agent id removed and checked
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from agent.platforms.base import Capacity, SessionTemplate
from agent.platforms.docker import spec as S
from agent.platforms.docker.address import EngineAddress
from agent.platforms.docker.driver import DockerDriver
from agent.platforms.docker.engine import EngineClient
from tests.support.dockerd import DockerEngine, base_image, blocking, cache_dir
from tests.support.processes import REPO
from tests.support.xvnc_sessions import capture, distinct_colours

SESSION_IMAGES = REPO / "deploy" / "session-images"
XTERM = "xterm -fa 'DejaVu Sans Mono' -fs 12 -geometry 100x30+0+0"


async def rfb_banner(endpoint) -> bytes:
    """The first 12 bytes a VNC server sends through `endpoint` (an IStreamClientEndpoint,
    what the agent's tunnels dial)."""
    received: defer.Deferred[bytes] = defer.Deferred()

    class Greeting(protocol.Protocol):
        buffered = b""

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.buffered += data
            if len(self.buffered) >= 12 and not received.called:
                received.callback(self.buffered[:12])
                self.transport.loseConnection()

    await endpoint.connect(protocol.Factory.forProtocol(Greeting))
    return await received.addTimeout(10, reactor)


async def screen_until_drawn(port: int, path, minimum: int = 30, timeout: float = 20) -> int:
    """A real VNC client (vncdotool) captures 127.0.0.1::port until the frame shows more
    than `minimum` colours (applications draw a moment after the display accepts RFB)."""
    deadline = reactor.seconds() + timeout
    while True:
        await capture(port, path)
        colours = distinct_colours(path)
        if colours >= minimum:
            return colours
        assert reactor.seconds() < deadline, f"only {colours} colours on screen"


def session_packages() -> list[str]:
    lines = (SESSION_IMAGES / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _digest(*names: str, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for name in names:
        digest.update((SESSION_IMAGES / name).read_bytes())
    return digest.hexdigest()[:12]


def _build(engine: DockerEngine, ref: str, *args: str) -> None:
    # The classic builder: BuildKit would need buildx, which Debian's docker.io lacks.
    engine.cli("build", "--network", "host", "-t", ref, *args, str(SESSION_IMAGES),
               env={"DOCKER_BUILDKIT": "0"}, timeout=1200)


def session_image(engine: DockerEngine) -> str:
    ref = f"streamspace/session:test-{_digest('Dockerfile', 'streamspace-session', 'packages.txt')}"
    if not engine.image_exists(ref):
        base = base_image(engine, include=session_packages(), name="streamspace-session-base")
        _build(engine, ref, "--build-arg", f"BASE_IMAGE={base}")
    return ref


def chromium_image(engine: DockerEngine) -> str:
    session = session_image(engine)
    ref = f"streamspace/session-chromium:test-{_digest('Dockerfile.chromium', extra=session)}"
    if engine.image_exists(ref):
        return ref
    folder = cache_dir() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / f"{ref.replace('/', '_').replace(':', '_')}.tar"
    with open(folder / f"{saved.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once build it once
        if saved.exists():
            engine.cli("load", "--input", str(saved), timeout=900)
            if engine.image_exists(ref):
                return ref
        _build(engine, ref, "-f", str(SESSION_IMAGES / "Dockerfile.chromium"),
               "--build-arg", f"SESSION_IMAGE={session}")
        partial = folder / f"{saved.name}.partial"
        engine.cli("save", "--output", str(partial), ref, timeout=900)
        os.replace(partial, saved)
    return ref


def terminal_template(image: str, **changes) -> dict:
    """A template dict (as the control plane sends it) that runs an xterm in `image`."""
    docker = {"image": image, "command": XTERM, **changes.pop("docker", {})}
    data = {"name": "terminal", "display_name": "Terminal", "cpu": 0.5, "memory_mb": 256,
            "env": {"STREAMSPACE_TEST": "yes"}, "persistent_home": False,
            "platforms": {"docker": docker}}
    data.update(changes)
    return data


@dataclass
class DockerHarness:
    engine: DockerEngine
    image: str
    agent_id: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    statuses: list[tuple[str, str, str]] = field(default_factory=list)
    progress: list[tuple[str, str]] = field(default_factory=list)
    drivers: list[DockerDriver] = field(default_factory=list)

    def make(self, capacity: Capacity | None = None, client: EngineClient | None = None,
             **options) -> DockerDriver:
        """A driver on the test engine (not started: `await driver.start()`)."""
        client = client or EngineClient(reactor, EngineAddress.parse(self.engine.host))
        options.setdefault("placement", S.Placement(network=S.HOST_NETWORK))
        driver = DockerDriver(reactor, client, capacity or Capacity(), agent_id=self.agent_id,
                              **options)
        driver.set_status_listener(lambda *a: self.statuses.append(a))
        driver.set_progress_listener(lambda *a: self.progress.append(a))
        self.drivers.append(driver)
        return driver

    async def started(self, capacity: Capacity | None = None, **options) -> DockerDriver:
        driver = self.make(capacity, **options)
        await driver.start()
        return driver

    def template(self, **changes) -> SessionTemplate:
        return SessionTemplate.from_json(terminal_template(self.image, **changes))

    async def shutdown(self) -> None:
        drivers, self.drivers = self.drivers, []
        await defer.gatherResults([d.shutdown() for d in drivers], consumeErrors=True)

    def containers(self, **labels: str) -> list[dict]:
        """This agent's containers, as the real `docker` CLI lists them."""
        argv = ["ps", "--all", "--no-trunc", "--format", "{{json .}}",
                "--filter", f"label={S.AGENT}={self.agent_id}"]
        for key, value in labels.items():
            argv += ["--filter", f"label={key}={value}"]
        out = self.engine.cli(*argv).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def volumes(self) -> list[str]:
        out = self.engine.cli("volume", "ls", "--quiet", "--filter",
                              f"label={S.AGENT}={self.agent_id}").stdout
        return out.split()

    def leftovers(self) -> dict[str, list[str]]:
        return {"containers": [c["Names"] for c in self.containers()],
                "volumes": self.volumes()}

    def cleanup(self) -> dict[str, list[str]]:
        """Remove everything of this agent id; returns the containers that were left."""
        left = self.leftovers()
        ids = [c["ID"] for c in self.containers()]
        if ids:
            self.engine.cli("rm", "--force", *ids)
        if left["volumes"]:
            self.engine.cli("volume", "rm", "--force", *left["volumes"])
        return left


@pytest.fixture(scope="session")
def docker_session_image(dockerd) -> str:
    return blocking(session_image, dockerd)


@pytest.fixture
def docker_harness(dockerd, docker_session_image):
    harness = DockerHarness(dockerd, docker_session_image)
    yield harness
    pytest_twisted.blockon(defer.ensureDeferred(harness.shutdown()))
    left = blocking(harness.cleanup)
    assert not left["containers"], f"containers left behind: {left['containers']}"
