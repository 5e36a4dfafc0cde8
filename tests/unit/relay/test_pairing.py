"""The tunnel pairing state machine: every order of events ends a tunnel exactly once,
closes what must be closed, and a late event changes nothing. Legs and the link are
stand-ins recording what the machine did to them (the real legs are exercised end to end in
tests/integration/relay)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from streamspace.relay.access import CLOSE_TIMEOUT, CLOSE_UNAVAILABLE
from streamspace.relay.pairing import TunnelPairing

TIMEOUT = 15.0


class FakeLeg:
    def __init__(self, name: str) -> None:
        self.name = name
        self.owner = None
        self.link = None
        self.closes: list[tuple[int, str]] = []

    def close_leg(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


class FakeLink:
    def __init__(self, viewer, tunnel) -> None:
        self.viewer, self.tunnel = viewer, tunnel
        self.started = self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1


class Harness:
    def __init__(self) -> None:
        self.clock = task.Clock()
        self.viewer = FakeLeg("viewer")
        self.requests: list[defer.Deferred] = []
        self.links: list[FakeLink] = []
        self.ended: list[TunnelPairing] = []
        self.pairing = TunnelPairing(
            "t1", "hash", self.viewer, grant=None, clock=self.clock,
            arrival_timeout=TIMEOUT, request=self._request, make_link=self._link,
            on_end=self.ended.append)

    def _request(self, pairing):
        d = defer.Deferred()
        self.requests.append(d)
        return d

    def _link(self, viewer, tunnel):
        link = FakeLink(viewer, tunnel)
        self.links.append(link)
        return link


def test_linked_then_viewer_leaves():
    h = Harness()
    h.pairing.start()
    assert len(h.requests) == 1 and h.clock.getDelayedCalls()
    tunnel = FakeLeg("tunnel")
    h.pairing.leg_opened(tunnel)
    assert h.links and h.links[0].started == 1 and tunnel.owner is h.pairing
    assert not h.clock.getDelayedCalls()  # the arrival timer is gone
    h.requests[0].callback((True, {}, None))  # the agent's answer may come after the leg
    h.pairing.leg_gone(h.viewer, "bye")
    assert h.links[0].stopped == 1
    assert tunnel.closes == [(1000, "the viewer left")]
    assert h.ended == [h.pairing] and h.pairing.outcome == "linked"
    h.pairing.leg_gone(tunnel, "closed (1000)")  # its close handshake completes later
    assert h.ended == [h.pairing] and h.viewer.closes == []


def test_tunnel_leg_that_never_comes_times_out_and_a_late_one_is_dropped():
    h = Harness()
    h.pairing.start()
    h.clock.advance(TIMEOUT)
    assert h.viewer.closes and h.viewer.closes[0][0] == CLOSE_TIMEOUT
    assert h.ended == [h.pairing] and h.pairing.outcome == "timeout"
    assert h.requests[0].called  # the outstanding request was cancelled
    late = FakeLeg("late")
    h.pairing.leg_opened(late)
    assert late.closes and not h.links


def test_agent_refusal_reaches_the_viewer_with_its_reason():
    h = Harness()
    h.pairing.start()
    h.requests[0].callback((False, None, "cannot reach the session's VNC server"))
    assert h.viewer.closes == [(CLOSE_UNAVAILABLE, "the agent could not connect: cannot "
                                                   "reach the session's VNC server")]
    assert not h.clock.getDelayedCalls() and h.ended == [h.pairing]


def test_an_agent_that_cannot_be_asked_is_a_refusal():
    h = Harness()
    h.pairing.start()
    h.requests[0].errback(ConnectionError("agent not connected"))
    assert h.viewer.closes[0][0] == CLOSE_UNAVAILABLE and h.ended == [h.pairing]


def test_end_closes_both_legs_once():
    h = Harness()
    h.pairing.start()
    tunnel = FakeLeg("tunnel")
    h.pairing.leg_opened(tunnel)
    h.pairing.end(4001, "access ended: the account changed")
    h.pairing.end(4001, "again")
    assert h.viewer.closes == [(4001, "access ended: the account changed")]
    assert tunnel.closes == [(1000, "access ended: the account changed")]
    assert h.links[0].stopped == 1 and h.ended == [h.pairing]


EVENTS = ("start", "arrive", "refuse", "answer_ok", "timeout", "viewer_left", "tunnel_left",
          "end")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=12))
def test_any_order_of_events_ends_at_most_once_and_never_leaks(events):
    h = Harness()
    tunnels: list[FakeLeg] = []
    for event in events:
        if event == "start":
            h.pairing.start()
        elif event == "arrive":
            tunnels.append(FakeLeg("tunnel"))
            h.pairing.leg_opened(tunnels[-1])
        elif event in ("refuse", "answer_ok") and h.requests and not h.requests[-1].called:
            h.requests[-1].callback((event == "answer_ok", {}, "no"))
        elif event == "timeout":
            h.clock.advance(TIMEOUT)
        elif event == "viewer_left":
            h.pairing.leg_gone(h.viewer, "gone")
        elif event == "tunnel_left" and tunnels:
            h.pairing.leg_gone(tunnels[0], "gone")
        elif event == "end":
            h.pairing.end(4001, "ended")
    assert len(h.ended) <= 1
    assert len(h.requests) <= 1 and len(h.links) <= 1
    assert len(h.viewer.closes) <= 1
    for link in h.links:
        assert link.started == 1 and link.stopped == (1 if h.ended else 0)
    if h.ended:
        assert not h.clock.getDelayedCalls()
        assert all(d.called for d in h.requests)
        # every tunnel leg that arrived is closed (or closed itself)
        for leg in tunnels:
            assert leg.closes or (leg is tunnels[0] and "tunnel_left" in events)
    if "viewer_left" in events or "end" in events:
        assert h.ended == [h.pairing]
