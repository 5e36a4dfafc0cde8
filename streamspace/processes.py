"""Children the control plane supervises (the embedded PostgreSQL, the local agent).

- `SupervisedProcess`: their output line by line (a line is cut at `MAX_LINE` bytes), the
  last lines kept for error messages, and a Deferred that fires with how they ended.
- `detached(argv, death_signal)`: run a child in its own session, so a terminal's Ctrl-C
  reaches only us and we stop children in order, and have the kernel signal it when we
  die (even by SIGKILL), so nothing survives us as an orphan. `setsid(1)` and
  `setpriv(1)` (util-linux, found by `procfs.tool`) both exec in place: the pid we get
  is the child's.
- `Supervisor` (with `Backoff`): start a child again when it ends while still wanted, or
  when starting it fails for any reason, after delays that grow while it keeps failing.
- `stop_child` / `stop_stray`: signal, wait, then SIGKILL: our own child (its end is
  reported to us) or a process a previous run left behind (not our child: polled).
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable

from twisted.internet import defer, error, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from streamspace_common import procfs

log = Logger()

MAX_LINE = 8192  # bytes of one output line kept; the rest of that line is dropped
KILL_WAIT = 5.0  # after SIGKILL, how long we wait for the process to be gone
POLL_INTERVAL = 0.1  # how often a process that is not our child is looked for


class SupervisedProcess(protocol.ProcessProtocol):
    def __init__(self, on_line: Callable[[str], None] | None = None, keep: int = 40) -> None:
        self.on_line = on_line
        self.lines: deque[str] = deque(maxlen=keep)
        self.ended: defer.Deferred = defer.Deferred()
        self._partial = b""
        self._cut = False  # the current line passed MAX_LINE: drop the rest of it

    def outReceived(self, data: bytes) -> None:
        *complete, tail = (self._partial + data).split(b"\n")
        for raw in complete:
            if self._cut:
                self._cut = False  # the end of a line already passed on, cut
                continue
            self._line(raw)
        if self._cut:
            tail = b""
        elif len(tail) > MAX_LINE:
            # A child writing without newlines must not grow our memory: its line is
            # passed on cut at MAX_LINE, the rest of it (up to its newline) dropped.
            self._line(tail)
            self._cut, tail = True, b""
        self._partial = tail

    errReceived = outReceived

    def _line(self, raw: bytes) -> None:
        if len(raw) > MAX_LINE:
            raw = raw[:MAX_LINE] + b" [...]"
        line = raw.decode(errors="replace")
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


def detached(argv: list[str], death_signal: str) -> list[str]:
    """`argv` in a new session, sent `death_signal` (e.g. TERM, INT, KILL) if we die."""
    return [procfs.tool("setsid"), procfs.tool("setpriv"), f"--pdeathsig={death_signal}",
            "--", *argv]


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


class Supervisor:
    """Keeps a child running while it is wanted.

    `launch()` starts the child and returns its `SupervisedProcess` (once it is usable);
    `watch(proc)` puts a child under supervision (the owner's first start, whose failure
    the owner reports itself). When a watched child ends while wanted, or a launch fails
    with any exception (an expected one is logged in one line, anything else with its
    traceback), the child is launched again after the backoff's delay; nothing ends
    supervision but `halt()`.
    """

    def __init__(self, reactor, what: str,
                 launch: Callable[[], Awaitable[SupervisedProcess]],
                 backoff: Backoff | None = None,
                 expected: tuple[type[BaseException], ...] = ()) -> None:
        self.reactor, self.what, self.launch = reactor, what, launch
        self.backoff = backoff or Backoff(reactor)
        self.expected = expected
        self.wanted = False
        self.restarts = 0
        self.current: SupervisedProcess | None = None
        self._call = None
        self._generation = 0  # bumped by halt(): a launch begun before it is void
        self._ran = False  # a child ran since start: the next launch is a restart

    def start(self) -> defer.Deferred:
        """Launch now, under supervision (a failure is retried like a crash)."""
        self.wanted = True
        return self._launch()

    def watch(self, proc: SupervisedProcess) -> None:
        self.wanted = True
        self.current = proc
        self._ran = True
        self.backoff.started()
        proc.ended.addCallback(self._ended, proc)

    def halt(self) -> None:
        """No more restarts (stopping the current child is the owner's business)."""
        self.wanted = False
        self.current = None
        self._ran = False
        self._generation += 1
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def pending(self) -> bool:
        """A restart is scheduled."""
        return self._call is not None and self._call.active()

    def _ended(self, reason, proc: SupervisedProcess):
        if self.current is proc:
            self.current = None
            if self.wanted:
                self._retry(f"exited: {_ending(reason)}")
        return reason

    def _retry(self, why: str) -> None:
        delay = self.backoff.delay()
        log.warn("{what} is down ({why}); restarting in {delay:.0f}s",
                 what=self.what, why=why, delay=delay)
        self._call = self.reactor.callLater(delay, self._launch)

    def _launch(self) -> defer.Deferred:
        self._call = None
        generation = self._generation

        def void() -> bool:
            return not self.wanted or generation != self._generation

        async def launch() -> None:
            try:
                proc = await self.launch()
            except Exception as e:
                if void():
                    return
                if not isinstance(e, self.expected):
                    log.failure("{what} could not be started", what=self.what)
                self._retry(str(e).splitlines()[0] if str(e) else type(e).__name__)
                return
            if void():
                return  # halted meanwhile: the owner stops what it started
            if self._ran:
                self.restarts += 1
                log.info("{what} restarted", what=self.what)
            self.watch(proc)

        return defer.Deferred.fromCoroutine(launch())


def _ending(reason) -> str:
    if isinstance(reason, error.ProcessTerminated):
        if reason.signal is not None:
            return f"killed by signal {reason.signal}"
        return f"status {reason.exitCode}"
    if isinstance(reason, error.ProcessDone):
        return "status 0"
    return str(reason)


async def _signal_wait_kill(reactor, what: str, send: Callable[[int], bool],
                            gone_within: Callable[[float], Awaitable[bool]],
                            sig: int, grace: float) -> bool:
    """The one escalation: `sig`, up to `grace` seconds, SIGKILL, up to KILL_WAIT seconds.
    `send(sig)` is False when the process is already gone. True once it is gone."""
    if not send(sig) or await gone_within(grace):
        return True
    log.warn("{what} did not stop within {grace:.0f}s; killing it", what=what, grace=grace)
    if not send(signal.SIGKILL) or await gone_within(KILL_WAIT):
        return True
    log.error("{what} survives SIGKILL", what=what)
    return False


async def stop_child(reactor, proc: SupervisedProcess, what: str,
                     sig: int = signal.SIGTERM, grace: float = 20.0) -> bool:
    """Stop a child we spawned: `sig`, then SIGKILL after `grace` seconds."""
    if proc.ended.called or proc.transport is None:
        return True

    def send(number: int) -> bool:
        try:
            proc.transport.signalProcess(number)
        except error.ProcessExitedAlready:
            return False
        return True

    async def gone_within(seconds: float) -> bool:
        if proc.ended.called:
            return True
        waiter: defer.Deferred = defer.Deferred()
        timer = reactor.callLater(seconds, lambda: waiter.called or waiter.callback(False))

        def ended(result):
            if not waiter.called:
                timer.cancel()
                waiter.callback(True)
            return result

        proc.ended.addBoth(ended)
        return await waiter

    return await _signal_wait_kill(reactor, what, send, gone_within, sig, grace)


async def stop_stray(reactor, pid: int, what: str, sig: int = signal.SIGTERM,
                     grace: float = 20.0) -> bool:
    """Stop a leftover process of a previous run (not our child: its end is polled)."""
    log.warn("stopping a leftover {what} (pid {pid}) from a previous run", what=what, pid=pid)
    label = f"{what} (pid {pid})"

    def send(number: int) -> bool:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            return False
        return True

    async def gone_within(seconds: float) -> bool:
        deadline = reactor.seconds() + seconds
        while process_alive(pid):
            if reactor.seconds() >= deadline:
                return False
            await deferLater(reactor, POLL_INTERVAL, lambda: None)
        return True

    return await _signal_wait_kill(reactor, label, send, gone_within, sig, grace)


def process_alive(pid: int) -> bool:
    """Running (a zombie has ended: only its exit status is left to collect)."""
    return procfs.state_of(pid) not in (None, "Z")
