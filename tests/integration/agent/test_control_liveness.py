"""The control connection's liveness over real WebSockets (issue 10 items 9 and 10): a
peer that stops answering pings is dropped, a half-open connection the control plane still
holds does not lock the agent out (the control plane pings the old one and replaces it),
a second agent with the same id is refused while the first answers, and shutting down
never raises out of a send on the closing connection."""

from __future__ import annotations

import gc

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from agent.endpoints import ControlPlaneAddress
from tests.support.blackhole import BlackholeProxy
from tests.support.fake_driver import FakeDriver
from tests.support.polling import until

# autobahn schedules its ping timers in whole seconds (txaio's batched timer floors
# `now + delay`), so a timeout under 2 s can fire at once: 1 s pings, 2 s to answer.
FAST_PINGS = {"ping_interval": 1.0, "ping_timeout": 2.0}


@pytest.fixture
def failures():
    """Every failure logged while the test runs (log.failure, "Unhandled error in
    Deferred"): there must be none."""
    seen: list[dict] = []

    def observe(event):
        if event.get("log_failure") is not None:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_control_plane_that_stops_answering_pings_is_left(control_plane, agents):
    agent = agents.start(FakeDriver(), **FAST_PINGS)
    leg = await control_plane.wait_connected()
    leg.answer_pings = False  # the peer is there (TCP open) but no longer answers
    await until(lambda: control_plane.connections == 2 and control_plane.control
                and control_plane.control is not leg and control_plane.control.registered
                and agent.channel.registered,
                10, what="the agent leaving the silent connection for a new one")
    assert len(control_plane.of_type("register")) == 2
    assert control_plane.errors == []


@pytest_twisted.ensureDeferred
async def test_a_half_open_connection_does_not_lock_the_agent_out(control_plane, agents,
                                                                  tmp_path):
    """The path dies without a FIN: the control plane still holds the old connection
    when the agent comes back. It pings the old one, gets no answer, and replaces it."""
    proxy = BlackholeProxy(control_plane.port)
    address = ControlPlaneAddress.parse(f"ws://127.0.0.1:{proxy.listen()}")
    try:
        agents.start(FakeDriver(), address=address, **FAST_PINGS)
        old = await control_plane.wait_connected()
        proxy.blackhole()
        await until(lambda: control_plane.replaced == 1, 10,
                    what="the control plane replacing the dead connection")
        new = await control_plane.wait_connected()
        assert new is not old and 409 not in control_plane.refusals
        assert len(control_plane.of_type("register")) == 2
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_second_agent_with_the_same_id_is_refused_while_the_first_answers(
        control_plane, agents, tmp_path):
    first = agents.start(FakeDriver(), **FAST_PINGS)
    leg = await control_plane.wait_connected()
    second = agents.start(FakeDriver(), state_dir=tmp_path / "other", **FAST_PINGS)
    # the agent counts a refusal when its connection attempt has closed, a moment after
    # the control plane refused it: wait for both
    await until(lambda: control_plane.refusals.count(409) >= 3
                and second.channel.failures >= 3, 15, what="the duplicate being refused")
    assert second.channel.link is None  # backs off, never connected
    # the first was never disturbed: same connection, still answering
    assert control_plane.control is leg and control_plane.connections == 1
    assert first.channel.registered and control_plane.replaced == 0
    await agents.stop(second)


@pytest_twisted.ensureDeferred
async def test_shutting_down_never_raises_from_a_closing_connection(control_plane, agents,
                                                                    failures):
    """Every agent shutdown used to log "Unhandled error in Deferred": the heartbeat
    sent on the connection after the agent's close frame, which autobahn refuses."""
    control_plane.heartbeat_interval = 0.02
    agent = agents.start(FakeDriver(), heartbeat_interval=0.02)
    leg = await control_plane.wait_connected()
    await until(lambda: len(control_plane.of_type("heartbeat")) >= 3, 5, what="heartbeats")
    leg.transport.pauseProducing()  # our close frame goes unanswered for a while
    await agents.stop(agent)  # closing: ~2 s of heartbeats into a closing connection
    gc.collect()  # an unhandled failure in a Deferred is logged when it is collected
    assert failures == []
    assert agent.channel.link is None
