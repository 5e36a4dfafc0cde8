"""Ctrl-C twice starts one ordered stop (the second is noted, never a second stop); a
third exits at once."""

from __future__ import annotations

import signal

from streamspace.service_tree import StopSignals


class _Reactor:
    """Records what a signal asks of the reactor (the real one would stop)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.triggers = []

    def sigInt(self, number, frame):
        self.calls.append("sigInt")

    def sigTerm(self, number, frame):
        self.calls.append("sigTerm")

    def addSystemEventTrigger(self, phase, event, fn):
        self.triggers.append((phase, event, fn))


def _no_exit(code: int) -> None:
    raise AssertionError(f"exited with {code}")


def test_a_second_signal_does_not_stop_twice():
    reactor = _Reactor()
    exits: list[int] = []
    signals = StopSignals(reactor, exit=exits.append)
    signals.received(signal.SIGINT)
    signals.received(signal.SIGTERM)
    assert reactor.calls == ["sigInt"] and exits == []


def test_a_signal_during_a_stop_begun_elsewhere_is_only_noted():
    reactor = _Reactor()
    signals = StopSignals(reactor, exit=_no_exit)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signals.install()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    [(phase, event, shutting_down)] = reactor.triggers
    assert (phase, event) == ("before", "shutdown")
    shutting_down()  # e.g. a fatal start-up error stopped the reactor
    signals.received(signal.SIGTERM)
    assert reactor.calls == []


def test_a_third_signal_exits_at_once():
    """Nit 12: an ordered stop that hangs must not leave the operator without a way out."""
    reactor = _Reactor()
    exits: list[int] = []
    signals = StopSignals(reactor, exit=exits.append)
    signals.received(signal.SIGINT)
    signals.received(signal.SIGINT)
    assert exits == []  # the second is only noted
    signals.received(signal.SIGINT)
    assert exits == [128 + signal.SIGINT] and reactor.calls == ["sigInt"]
