"""Supervision of the control plane's children, on a fake clock: restarts with backoff
whatever went wrong, nothing after halt(), and bounded output buffering."""

from __future__ import annotations

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from streamspace import processes
from streamspace.processes import Backoff, SupervisedProcess, Supervisor


def test_output_without_newlines_is_cut_not_buffered():
    """Nit 4: a child writing megabytes without a newline must not grow our memory."""
    seen: list[str] = []
    proc = SupervisedProcess(seen.append)
    for _ in range(256):
        proc.outReceived(b"y" * 4096)  # 1 MiB, no newline
        assert len(proc._partial) <= processes.MAX_LINE
    proc.outReceived(b"tail\nnext line\nhalf")
    assert seen == ["y" * processes.MAX_LINE + " [...]", "next line"]
    proc.outReceived(b" done\n")
    assert seen[-1] == "half done" and proc._partial == b""


def _ended_by(proc: SupervisedProcess, code: int) -> None:
    proc.processEnded(Failure(error.ProcessTerminated(exitCode=code)))


class _Launches:
    """Stands for spawning: each call hands out a new process, or raises what it is told."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.made: list[SupervisedProcess] = []

    async def __call__(self) -> SupervisedProcess:
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, BaseException):
            raise outcome
        proc = SupervisedProcess()
        self.made.append(proc)
        return proc


def test_restarts_with_backoff_after_deaths_and_failed_launches_of_any_kind():
    clock = Clock()
    launches = _Launches(None, OSError(24, "Too many open files"),
                         RuntimeError("something unforeseen"))
    sup = Supervisor(clock, "child", launches, Backoff(clock, initial=1.0))
    sup.start()
    assert len(launches.made) == 1 and sup.restarts == 0
    _ended_by(launches.made[0], 1)
    assert sup.pending
    clock.advance(1)  # first delay: 1 s, the launch raises OSError
    assert len(launches.made) == 1 and sup.pending
    clock.advance(2)  # then 2 s: RuntimeError, still not the end of it
    assert len(launches.made) == 1 and sup.pending
    clock.advance(3.9)
    assert len(launches.made) == 1
    clock.advance(0.1)  # then 4 s: it runs again
    assert len(launches.made) == 2 and sup.restarts == 1 and sup.current is launches.made[1]
    clock.advance(60)  # ran long enough to count as healthy: the backoff resets
    _ended_by(launches.made[1], 1)
    clock.advance(1)
    assert len(launches.made) == 3 and sup.restarts == 2


def test_a_first_launch_that_fails_is_retried_too():
    clock = Clock()
    launches = _Launches(OSError(2, "No such file or directory"))
    sup = Supervisor(clock, "child", launches)
    sup.start()
    assert launches.made == [] and sup.pending
    clock.advance(1)
    assert len(launches.made) == 1 and sup.restarts == 0


def test_halt_ends_restarts_and_voids_a_launch_under_way():
    clock = Clock()
    gate: defer.Deferred = defer.Deferred()
    made: list[SupervisedProcess] = []

    async def slow_launch() -> SupervisedProcess:
        await gate
        proc = SupervisedProcess()
        made.append(proc)
        return proc

    sup = Supervisor(clock, "child", slow_launch)
    first = SupervisedProcess()
    sup.watch(first)  # the owner's own first start
    _ended_by(first, 1)
    clock.advance(1)  # the restart begins, and waits at the gate
    sup.halt()
    sup.start()  # wanted again (a new start) before the old launch finished
    gate.callback(None)
    # both launches finished; only the new start's process is supervised
    assert len(made) == 2 and sup.current is made[1] and sup.restarts == 0
    sup.halt()
    _ended_by(made[1], 1)
    assert not sup.pending
    clock.advance(100)
    assert len(made) == 2


@pytest.mark.parametrize("reason, said", [
    (error.ProcessTerminated(exitCode=3), "status 3"),
    (error.ProcessTerminated(signal=9), "killed by signal 9"),
    (error.ProcessDone(None), "status 0"),
])
def test_how_a_child_ended_is_said_plainly(reason, said):
    assert processes._ending(reason) == said
