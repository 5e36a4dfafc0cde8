"""Session processes that lead their own process group, spawned through the reactor.

Each process is started as `setsid <argv>`: `setsid(1)` calls setsid(2) and execs in place
(a child of the reactor is never a group leader, so it does not fork), so the pid we get
is also the process-group id and signalling `-pid` reaches everything the app started.

Output (stdout and stderr) comes to the agent through pipes and goes to a bounded log
(session_log.py: at most 2 MiB per process on disk), never to a file of the agent's handed
to the session; a process printing more than `OUTPUT_RATE` bytes is paused for a second
before the next `OUTPUT_RATE` (the pipe then blocks it), so no session fills the disk or
keeps the reactor busy. The last lines make a readable reason when a process dies.

A process may say how it is asked to stop (`polite_stop`): a bubblewrap sandbox is asked by
signalling what runs inside it, since bwrap itself dies at once on SIGTERM and takes the
sandbox down with SIGKILL.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from agent.platforms import session_log
from streamspace_common import procfs

OUTPUT_RATE = 1 << 20  # bytes a process may print before its output is paused for 1 s
OUTPUT_PAUSE = 1.0
# After a process exits, its output is read to the end; a process that escaped its group
# may still hold the pipes, so they are closed after this long.
DRAIN_GRACE = 1.0


class GroupProcess(ProcessProtocol):
    """One spawned process leading its own group; `wait()` fires when it has ended."""

    def __init__(self, name: str, log_path: Path, clock, rate: int = OUTPUT_RATE) -> None:
        self.name = name
        self.log_path = log_path
        self.output = session_log.BoundedLog(log_path)
        self.received = 0  # bytes of output read so far
        self.pid: int | None = None
        self.ended: BaseException | None = None
        self.polite_stop: Callable[[], Any] | None = None
        # bwrap exits with 128+N when what it runs is killed by signal N
        self.signal_in_status = False
        self._clock, self._rate = clock, rate
        self._budget = rate
        self._exited = False
        self._resume_call = None
        self._drain_call = None
        self._waiters: list[defer.Deferred[BaseException]] = []

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.received += len(data)
        self.output.write(data)
        self._budget -= len(data)
        if self._budget <= 0 and not self._exited and self._resume_call is None:
            self.transport.pauseProducing()
            self._resume_call = self._clock.callLater(OUTPUT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        self._budget = self._rate
        self.transport.resumeProducing()

    def processExited(self, reason: Failure) -> None:
        self._exited = True
        if self._resume_call is not None:
            self._resume_call.cancel()
            self._resume()
        self._drain_call = self._clock.callLater(DRAIN_GRACE, self.transport.loseConnection)

    def processEnded(self, reason: Failure) -> None:
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self.output.close()
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
        data = session_log.tail(self.log_path).decode("utf-8", "replace")
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
    """Start `argv` in a new session/process group, its output read into `log_path`.

    `extra_fds` maps child fd numbers (3 and up) to open fds of ours, which the caller
    still owns and closes."""
    setsid = procfs.tool("setsid")
    proto = GroupProcess(name, log_path, reactor)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    try:
        reactor.spawnProcess(proto, setsid, [setsid, *argv], env=env, path=cwd,
                             childFDs={0: null_fd, 1: "r", 2: "r", **(extra_fds or {})})
    except BaseException:
        proto.output.close()
        raise
    finally:
        os.close(null_fd)
    return proto


async def terminate_group(proc: GroupProcess, clock, grace: float = 5.0) -> None:
    """SIGTERM the group, SIGKILL it after `grace` seconds, and wait for the leader to end.

    A last SIGKILL to the group catches stragglers that outlived the leader.
    """
    if proc.running:
        if proc.polite_stop is not None:
            await defer.maybeDeferred(proc.polite_stop)
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
    A scan of the whole process table: reactor code runs it on a thread (blocking.py).
    """
    wanted = dict(m.split("=", 1) for m in markers)
    me = os.getpid()
    found: list[int] = []
    for pid in procfs.pids():
        if pid == me:
            continue
        env = procfs.environ(pid)
        if env is not None and all(env.get(k) == v for k, v in wanted.items()):
            found.append(pid)
    return found


def pids_of_uid(uid: int) -> list[int]:
    """Pids of processes whose real user id is `uid` (a scan, like `pids_with_environ`)."""
    return [pid for pid in procfs.pids() if procfs.uid_of(pid) == uid]


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
