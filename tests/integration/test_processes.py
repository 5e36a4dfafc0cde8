"""The one "signal, wait, SIGKILL" of the control plane, on real processes: our own child
(its end is reported to us) and a leftover of a previous run (not our child: polled)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor

from streamspace.processes import (
    SupervisedProcess,
    process_alive,
    stop_child,
    stop_stray,
)
from tests.support.polling import until

# A process that says it is ready, then ignores SIGTERM (or not) and sleeps.
STUBBORN = ("import signal, sys, time\n"
            "if sys.argv[1] == 'ignore': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")


def _spawn_child(mode: str) -> SupervisedProcess:
    proc = SupervisedProcess()
    argv = [sys.executable, "-c", STUBBORN, mode]
    reactor.spawnProcess(proc, argv[0], argv, env={})
    return proc


@pytest_twisted.ensureDeferred
async def test_a_child_that_obeys_is_stopped_by_the_signal():
    proc = _spawn_child("obey")
    await until(lambda: "ready" in proc.lines, what="the child to start")
    assert await stop_child(reactor, proc, "obedient child", signal.SIGTERM, grace=10)
    reason = proc.ended.result
    assert reason.signal == signal.SIGTERM


@pytest_twisted.ensureDeferred
async def test_a_child_that_ignores_the_signal_is_killed_after_the_grace():
    proc = _spawn_child("ignore")
    await until(lambda: "ready" in proc.lines, what="the child to start")
    started = reactor.seconds()
    assert await stop_child(reactor, proc, "stubborn child", signal.SIGTERM, grace=0.5)
    assert proc.ended.result.signal == signal.SIGKILL
    assert reactor.seconds() - started >= 0.5
    assert await stop_child(reactor, proc, "stubborn child")  # already gone: nothing to do


@pytest_twisted.ensureDeferred
async def test_a_leftover_that_ignores_the_signal_is_killed_after_the_grace():
    stray = subprocess.Popen([sys.executable, "-c", STUBBORN, "ignore"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stray.stdout.readline().strip() == "ready"  # its handler is in place
        assert await stop_stray(reactor, stray.pid, "stubborn leftover", signal.SIGTERM,
                                grace=0.5)
        assert not process_alive(stray.pid)
        assert stray.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
