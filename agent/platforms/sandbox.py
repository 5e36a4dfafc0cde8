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

so it sees none of the host's other files (no /run, /var, /home, /root, /work...), none of
its processes or their environment, and no capabilities. Directories that must stay
private but lie under a bound system directory (the agent's state directory, the control
plane's, the checkout, e.g. `/opt/streamspace/.streamspace`) are covered by an empty
read-only tmpfs (`hidden`). The agent runs bwrap as root and drops to the session's account inside
(no user namespace needed); an agent that is not root runs bwrap unprivileged (bwrap then
makes a user namespace) as itself. The network namespace is shared: applications need the
network, and the X and VNC servers are protected by credentials instead (see xvnc.py).

`probe` runs one real sandbox at start-up, so an agent knows (and says) whether it can
isolate sessions before it runs any. With no sandbox at all, sessions would run as the
agent's own user with nothing between them and the agent (its token file, its /proc, its
state directory): they could impersonate it and receive every user's sessions. So then
no session runs, unless the operator opts in (`LOCAL_ALLOW_UNSANDBOXED`) for an agent
that serves one trusted user.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet import defer, protocol

from streamspace_common import procfs

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
    to run them as root, or without a sandbox and the operator did not opt in).
    """

    accounts: bool
    bwrap: str | None
    problem: str = ""
    refuse_all: bool = False

    @property
    def isolated(self) -> bool:
        return self.accounts and self.bwrap is not None and not self.problem


ALLOW_UNSANDBOXED = "LOCAL_ALLOW_UNSANDBOXED"


async def probe(reactor, bwrap: str | None = None, as_root: bool | None = None,
                allow_unsandboxed: bool = False) -> Isolation:
    """Run a real sandbox (as a session would run) and tell what this machine can do."""
    if bwrap is None:
        try:
            bwrap = procfs.tool("bwrap")
        except procfs.MissingTool:
            bwrap = None
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
    if broken and not allow_unsandboxed:
        return Isolation(accounts=False, bwrap=None, refuse_all=True, problem=(
            f"{broken}; without a sandbox a session runs as the agent's own user and could "
            "read its token and impersonate it, so it runs none (an operator may allow it "
            f"with {ALLOW_UNSANDBOXED}=true, only for an agent that serves one trusted user)"))
    if broken:
        problem += (f", and {broken}: sessions run without a sandbox as the agent's own user "
                    f"({ALLOW_UNSANDBOXED}=true) and can impersonate this agent")
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
                 private_tmp: str | None = None, hidden: Iterable[str] = ()
                 ) -> tuple[list[str], list[str]]:
    """bwrap's options (for `--args`: mounts and environment stay out of `ps`) and the
    command line after them (`--`, bwrap reads no command from `--args`) to run `command`
    as `run_as` (uid, gid) or as the caller (`run_as` None), seeing only the system
    directories (less the `hidden` paths under them) and the given binds."""
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

    bound = []
    for path in SYSTEM_DIRS:
        if os.path.isdir(path):
            args.extend(["--ro-bind", path, path])
            bound.append(path)
    for path in ROOT_LINKS:
        if os.path.islink(path):
            args.extend(["--symlink", os.readlink(path), path])
        elif os.path.isdir(path):
            args.extend(["--ro-bind", path, path])
            bound.append(path)
    for path in OPTIONAL_DIRS:
        if os.path.isdir(path):
            parents(path)
            args.extend(["--ro-bind", path, path])
            bound.append(path)
    for inside, is_dir in hidden_under(hidden, bound):
        if is_dir:
            args.extend(["--perms", "0755", "--tmpfs", inside, "--remount-ro", inside])
        else:
            args.extend(["--ro-bind", os.devnull, inside])
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
        tail.extend([procfs.tool("setpriv"), f"--reuid={uid}", f"--regid={gid}",
                     "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                     "--no-new-privs", "--"])
    tail.extend(command)
    return args, tail


def hidden_under(paths: Iterable[str], bound: Iterable[str]) -> list[tuple[str, bool]]:
    """Where each of `paths` shows inside a sandbox that binds the `bound` directories
    (compared by real path, so symlinks on either side are seen through), and whether it
    is a directory. Paths outside every bound directory, or missing, are not visible and
    need no cover; nor do paths inside another path covered."""
    found: dict[str, bool] = {}
    bound_real = [(dest, os.path.realpath(dest)) for dest in bound]
    for path in paths:
        if not path or not os.path.lexists(path):
            continue
        real = os.path.realpath(path)
        for dest, dest_real in bound_real:
            if real == dest_real or real.startswith(dest_real.rstrip("/") + "/"):
                inside = dest.rstrip("/") + real[len(dest_real.rstrip("/")):]
                found[inside] = os.path.isdir(real)
    # a path inside another covered one is covered with it (and could not be mounted on:
    # the cover is empty and read-only)
    return sorted((inside, is_dir) for inside, is_dir in found.items()
                  if not any(inside.startswith(other + "/") for other in found))


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


def members(bwrap_pid: int) -> list[int]:
    """Host pids of the processes inside the sandbox bwrap `bwrap_pid` leads, except its
    pid-1 reaper (which ignores SIGTERM): the reaper's descendants in its pid namespace
    (every orphan of the sandbox is reparented to that reaper), found without a scan of
    the whole process table."""
    reapers = procfs.children(bwrap_pid)
    if not reapers:
        return []
    reaper = reapers[0]
    ns = procfs.pid_namespace(reaper)
    if ns is None or ns == procfs.pid_namespace(bwrap_pid):
        return []
    return [pid for pid in procfs.descendants(reaper) if procfs.pid_namespace(pid) == ns]


def ask_to_stop(bwrap_pid: int) -> None:
    """SIGTERM what runs in the sandbox, so applications stop cleanly; the sandbox ends when
    its command exits (its pid namespace dies with it)."""
    for pid in members(bwrap_pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
