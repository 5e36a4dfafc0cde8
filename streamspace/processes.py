"""Children the control plane supervises (the embedded PostgreSQL, the local agent).

- `SupervisedProcess`: their output line by line, the last lines kept for error messages,
  and a Deferred that fires with how they ended.
- `detached(argv, death_signal)`: run a child in its own session, so a terminal's Ctrl-C
  reaches only us and we stop children in order, and have the kernel signal it when we
  die (even by SIGKILL), so nothing survives us as an orphan. `setsid(1)` and
  `setpriv(1)` (util-linux) both exec in place: the pid we get is the child's.
- `Backoff`: restart delays that grow while a child keeps dying and reset once it has run
  for a while.
- `stop_stray`: end a process a previous run of ours left behind (not our child: polled).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger()


class SupervisedProcess(protocol.ProcessProtocol):
    def __init__(self, on_line: Callable[[str], None] | None = None, keep: int = 40) -> None:
        self.on_line = on_line
        self.lines: deque[str] = deque(maxlen=keep)
        self.ended: defer.Deferred = defer.Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


def _tool(name: str) -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not os.path.exists(found):
        raise RuntimeError(f"{name} (util-linux) is needed to supervise child processes")
    return found


def detached(argv: list[str], death_signal: str) -> list[str]:
    """`argv` in a new session, sent `death_signal` (e.g. TERM, INT, KILL) if we die."""
    return [_tool("setsid"), _tool("setpriv"), f"--pdeathsig={death_signal}", "--", *argv]


class Backoff:
    """1 s, 2 s, 4 s... up to `cap`; back to `initial` once a child ran `healthy` seconds."""

    def __init__(self, clock, initial: float = 1.0, cap: float = 30.0,
                 healthy: float = 60.0) -> None:
        self.clock, self.initial, self.cap, self.healthy = clock, initial, cap, healthy
        self._next = initial
        self._started_at: float | None = None

    def started(self) -> None:
        self._started_at = self.clock.seconds()

    def delay(self) -> float:
        """The wait before the next attempt (call once per failure)."""
        if self._started_at is not None and \
                self.clock.seconds() - self._started_at >= self.healthy:
            self._next = self.initial
        self._started_at = None
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


async def stop_stray(reactor, pid: int, what: str, sig: int = signal.SIGTERM,
                     grace: float = 20.0) -> None:
    """Signal a leftover process, wait up to `grace` seconds, then SIGKILL it."""
    log.warn("stopping a leftover {what} (pid {pid}) from a previous run", what=what, pid=pid)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline, killed = reactor.seconds() + grace, False
    while process_alive(pid):
        if reactor.seconds() >= deadline:
            if killed:
                log.error("{what} (pid {pid}) survives SIGKILL", what=what, pid=pid)
                return
            log.warn("{what} (pid {pid}) ignored the signal; killing it", what=what, pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline, killed = reactor.seconds() + 5.0, True
        await deferLater(reactor, 0.1, lambda: None)
