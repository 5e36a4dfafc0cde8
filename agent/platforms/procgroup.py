"""Session processes that lead their own process group, spawned through the reactor.

Each process is started as `setsid <argv>`: `setsid(1)` calls setsid(2) and execs in place
(a child of the reactor is never a group leader, so it does not fork), so the pid we get
is also the process-group id and signalling `-pid` reaches everything the app started.
Output goes straight to a log file (no pipe the reactor has to drain), and the last lines
of that file make a readable reason when a process dies.

A process may say how it is asked to stop (`polite_stop`): a bubblewrap sandbox is asked by
signalling what runs inside it, since bwrap itself dies at once on SIGTERM and takes the
sandbox down with SIGKILL.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

SETSID = "/usr/bin/setsid" if os.path.exists("/usr/bin/setsid") else "setsid"


class GroupProcess(ProcessProtocol):
    """One spawned process leading its own group; `wait()` fires when it has ended."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.pid: int | None = None
        self.ended: BaseException | None = None
        self.polite_stop: Callable[[], None] | None = None
        # bwrap exits with 128+N when what it runs is killed by signal N
        self.signal_in_status = False
        self._waiters: list[defer.Deferred[BaseException]] = []

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def processEnded(self, reason: Failure) -> None:
        self.ended = reason.value
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.ended)

    @property
    def running(self) -> bool:
        return self.ended is None

    def wait(self) -> defer.Deferred[BaseException]:
        """Fires with ProcessDone/ProcessTerminated once the process has ended."""
        if self.ended is not None:
            return defer.succeed(self.ended)
        d: defer.Deferred[BaseException] = defer.Deferred()
        self._waiters.append(d)
        return d

    def signal_group(self, sig: int) -> None:
        """Signal the whole group; a group that is already gone is fine."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def exit_description(self) -> str:
        return describe_exit(self.ended, self.signal_in_status)

    def log_tail(self, limit: int = 400) -> str:
        """The end of the process's output, one line, for a failure reason."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 4096))
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in data.splitlines() if line.strip()]
        text = " | ".join(lines[-3:])
        return text[-limit:]


def describe_exit(ended: BaseException | None, signal_in_status: bool = False) -> str:
    if ended is None:
        return "is still running"
    if isinstance(ended, ProcessDone):
        return "exited normally"
    if isinstance(ended, ProcessTerminated):
        signum = ended.signal
        if signum is None and signal_in_status and (ended.exitCode or 0) > 128:
            signum = ended.exitCode - 128
        if signum is not None:
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            return f"was killed by {name}"
        return f"exited with status {ended.exitCode}"
    return f"ended ({ended})"


def spawn_in_group(reactor, name: str, argv: list[str], env: dict[str, str], cwd: str,
                   log_path: Path, extra_fds: dict[int, int] | None = None) -> GroupProcess:
    """Start `argv` in a new session/process group, output appended to `log_path`.

    `extra_fds` maps child fd numbers (3 and up) to open fds of ours, which the caller
    still owns and closes."""
    proto = GroupProcess(name, log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    try:
        reactor.spawnProcess(proto, SETSID, [SETSID, *argv], env=env, path=cwd,
                             childFDs={0: null_fd, 1: log_fd, 2: log_fd, **(extra_fds or {})})
    finally:
        os.close(log_fd)
        os.close(null_fd)
    return proto


async def terminate_group(proc: GroupProcess, clock, grace: float = 5.0) -> None:
    """SIGTERM the group, SIGKILL it after `grace` seconds, and wait for the leader to end.

    A last SIGKILL to the group catches stragglers that outlived the leader.
    """
    if proc.running:
        if proc.polite_stop is not None:
            proc.polite_stop()
        else:
            proc.signal_group(signal.SIGTERM)
        waited = proc.wait()
        waited.addTimeout(grace, clock)
        try:
            await waited
        except defer.TimeoutError:
            proc.signal_group(signal.SIGKILL)
            await proc.wait()
    proc.signal_group(signal.SIGKILL)


def pids_with_environ(*markers: str) -> list[int]:
    """Pids of processes whose environment holds every `KEY=value` marker (from /proc).

    Used to sweep what escaped a process group and to reap sessions a crashed agent left.
    Reads small files; meant for stop and start-up, not for hot paths.
    """
    wanted = [m.encode() + b"\0" for m in markers]
    found: list[int] = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read() + b"\0"
        except OSError:
            continue
        if all(b"\0" + m in b"\0" + environ for m in wanted):
            found.append(int(entry.name))
    return found


def pids_of_uid(uid: int) -> list[int]:
    """Pids of processes whose real user id is `uid` (from /proc/<pid>/status)."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
