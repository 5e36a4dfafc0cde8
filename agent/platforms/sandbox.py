"""Bubblewrap sandboxes for local session processes, and what this machine can isolate.

Each session process (its Xvnc, its application) runs as

    setsid bwrap --args 3        # mounts and environment come through fd 3, out of `ps`
      <read-only /usr, /etc, /opt; /bin, /lib... as on the host>
      --proc /proc --dev /dev --tmpfs /dev/shm     # its own pid namespace's /proc
      --bind <session>/sandbox/tmp /tmp            # a private /tmp, shared by its processes
      --bind <home> /home/<account>                # (the application only)
      --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try
      --die-with-parent --new-session --clearenv --setenv ...
      -- setpriv --reuid U --regid G --clear-groups --no-new-privs ... -- <command>

so it sees none of the host's other files (no state directory of the agent or the control
plane, no /run, /var, /home, /root, /work...), none of its processes or their environment,
and no capabilities. The agent runs bwrap as root and drops to the session's account inside
(no user namespace needed); an agent that is not root runs bwrap unprivileged (bwrap then
makes a user namespace) as itself. The network namespace is shared: applications need the
network, and the X and VNC servers are protected by credentials instead (see xvnc.py).

`probe` runs one real sandbox at start-up, so an agent knows (and says) whether it can
isolate sessions before it runs any.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet import defer, protocol

SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
SYSTEM_DIRS = ("/usr", "/etc", "/opt")
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
OPTIONAL_DIRS = ("/var/cache/fontconfig", "/var/lib/dbus")
RUN_DIR = "/run/streamspace"  # inside a sandbox: the session's cookie and VNC socket


@dataclass(frozen=True)
class Isolation:
    """What the local platform can give sessions on this machine.

    `isolated`: each user's sessions run as their own account inside a sandbox, so several
    users may share the agent. Otherwise `problem` says why not, and the driver runs
    sessions of one user at a time (`refuse_all`: none at all, when the only way would be
    to run them as root or with the agent's state reachable).
    """

    accounts: bool
    bwrap: str | None
    problem: str = ""
    refuse_all: bool = False

    @property
    def isolated(self) -> bool:
        return self.accounts and self.bwrap is not None and not self.problem


async def probe(reactor, bwrap: str | None = None, as_root: bool | None = None
                ) -> Isolation:
    """Run a real sandbox (as a session would run) and tell what this machine can do."""
    bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
    as_root = os.geteuid() == 0 if as_root is None else as_root
    broken = ""
    if bwrap is None or not os.access(bwrap, os.X_OK):
        broken = "bubblewrap (bwrap) is not installed (Debian: bubblewrap)"
        bwrap = None
    else:
        nobody = (65534, 65534) if as_root else None
        args, tail = sandbox_args(binds=(), ro_binds=(), env={"PATH": "/usr/bin:/bin"},
                                  cwd="/", command=["/bin/true"], run_as=nobody,
                                  unprivileged=not as_root)
        read_fd = args_pipe(args)
        try:
            out, err, code = await _run_with_args_fd(reactor, [bwrap, "--args", "3", *tail],
                                                     read_fd)
        finally:
            os.close(read_fd)
        if code != 0:
            lines = (err or out).decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {code}"
            broken = f"bubblewrap cannot create a sandbox here ({detail})"
            bwrap = None
    if as_root:
        if broken:
            return Isolation(accounts=True, bwrap=None, refuse_all=True, problem=(
                f"{broken}; an agent running as root runs sessions only in a sandbox as "
                "their user's own account, so it runs none"))
        return Isolation(accounts=True, bwrap=bwrap)
    problem = ("the agent does not run as root, so it cannot give each user an account of "
               "their own")
    if broken:
        problem += f", and {broken}"
    return Isolation(accounts=False, bwrap=bwrap, problem=problem)


async def _run_with_args_fd(reactor, argv: list[str], fd: int) -> tuple[bytes, bytes, int]:
    done: defer.Deferred = defer.Deferred()

    class Collect(protocol.ProcessProtocol):
        out, err = b"", b""

        def outReceived(self, data):
            self.out += data

        def errReceived(self, data):
            self.err += data

        def processEnded(self, reason):
            code = reason.value.exitCode
            done.callback((self.out, self.err, -1 if code is None else code))

    reactor.spawnProcess(Collect(), argv[0], argv,
                         env={"PATH": "/usr/bin:/bin"}, path="/",
                         childFDs={0: "w", 1: "r", 2: "r", 3: fd})
    return await done


def sandbox_args(*, binds: Iterable[tuple[str, str]], ro_binds: Iterable[tuple[str, str]],
                 env: Mapping[str, str], cwd: str, command: Sequence[str],
                 run_as: tuple[int, int] | None, unprivileged: bool,
                 private_tmp: str | None = None) -> tuple[list[str], list[str]]:
    """bwrap's options (for `--args`: mounts and environment stay out of `ps`) and the
    command line after them (`--`, bwrap reads no command from `--args`) to run `command`
    as `run_as` (uid, gid) or as the caller (`run_as` None), seeing only the system
    directories and the given binds."""
    args: list[str] = []
    made: set[str] = {"/"}

    def parents(dest: str) -> None:
        # bwrap running as root makes missing parents 0700: make them 0755 ourselves
        parts = dest.strip("/").split("/")[:-1]
        path = ""
        for part in parts:
            path += "/" + part
            if path not in made:
                made.add(path)
                args.extend(["--perms", "0755", "--dir", path])

    for path in SYSTEM_DIRS:
        if os.path.isdir(path):
            args.extend(["--ro-bind", path, path])
    for path in ROOT_LINKS:
        if os.path.islink(path):
            args.extend(["--symlink", os.readlink(path), path])
        elif os.path.isdir(path):
            args.extend(["--ro-bind", path, path])
    for path in OPTIONAL_DIRS:
        if os.path.isdir(path):
            parents(path)
            args.extend(["--ro-bind", path, path])
    args.extend(["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"])
    if private_tmp is not None:
        args.extend(["--bind", private_tmp, "/tmp"])
    else:
        args.extend(["--perms", "1777", "--tmpfs", "/tmp"])
    parents("/var/tmp")
    args.extend(["--symlink", "/tmp", "/var/tmp"])
    for dest in (RUN_DIR, "/home"):
        parents(dest + "/x")
    for src, dest in binds:
        parents(dest)
        args.extend(["--bind", src, dest])
    for src, dest in ro_binds:
        parents(dest)
        args.extend(["--ro-bind", src, dest])
    args.extend(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--hostname", "streamspace", "--die-with-parent", "--new-session",
                 "--clearenv", "--chdir", cwd])
    if unprivileged:
        args.append("--unshare-user")
    for key, value in env.items():
        args.extend(["--setenv", key, value])
    tail = ["--"]
    if run_as is not None:
        uid, gid = run_as
        tail.extend([SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"])
    tail.extend(command)
    return args, tail


def args_pipe(args: Sequence[str]) -> int:
    """A pipe's read end holding `args` NUL-separated (bwrap `--args`); caller closes it."""
    data = b"".join(a.encode() + b"\0" for a in args)
    if len(data) > 60_000:  # a pipe holds 64 KiB; more would block us
        raise ValueError("the sandbox's arguments are too long")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def members(bwrap_pid: int) -> list[int]:
    """Host pids of the processes inside the sandbox bwrap `bwrap_pid` leads, except its
    pid-1 reaper (which ignores SIGTERM)."""
    reapers = _children(bwrap_pid)
    if not reapers:
        return []
    reaper = reapers[0]
    ns = _pid_ns(reaper)
    if ns is None or ns == _pid_ns(bwrap_pid):
        return []
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != reaper and _pid_ns(int(entry.name)) == ns:
            found.append(int(entry.name))
    return found


def ask_to_stop(bwrap_pid: int) -> None:
    """SIGTERM what runs in the sandbox, so applications stop cleanly; the sandbox ends when
    its command exits (its pid namespace dies with it)."""
    for pid in members(bwrap_pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
