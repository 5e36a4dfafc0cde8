"""The agent's control channel against a fake hub speaking docs/protocol.md over real
WebSockets: register, heartbeat, commands with ack/complete, redelivery, reconnection."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from agent.platforms.base import VncEndpoint
from tests.support.fake_driver import FakeDriver, FakePlatform
from tests.support.polling import sleep, until

TEMPLATE = {"name": "xterm", "cpu": 1, "memory_mb": 512, "env": {}, "persistent_home": False,
            "platforms": {"local": {"command": "xterm"}}}
USER = {"id": "u1", "username": "alice"}


@pytest_twisted.ensureDeferred
async def test_register_first_with_running_sessions_then_heartbeats(control_plane, agents):
    control_plane.heartbeat_interval = 0.2
    driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", 5901))
    driver.add_running("s-already")
    agents.start(driver)
    await control_plane.wait_connected()
    first = control_plane.frames[0]
    assert first["type"] == "register"
    p = first["payload"]
    assert p["agent_id"] == "agent-1" and p["platform"] == "local"
    assert p["protocol_version"] == 1
    assert p["capacity"] == {"max_sessions": 0, "max_cpu": 0.0, "max_memory_gb": 0.0}
    assert p["sessions"] == [{"session_id": "s-already", "state": "running"}]
    assert "hostname" in p["metadata"]
    # heartbeats follow at the (shorter) interval the control plane asked for
    await until(lambda: len(control_plane.of_type("heartbeat")) >= 3, 5, what="heartbeats")
    beat = control_plane.of_type("heartbeat")[0]["payload"]
    assert beat["usage"]["sessions"] == 1
    assert beat["sessions"] == [{"session_id": "s-already", "state": "running"}]
    assert control_plane.errors == []


@pytest_twisted.ensureDeferred
async def test_command_is_acked_then_completed(control_plane, agents):
    driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", 5905))
    agents.start(driver)
    await control_plane.wait_connected()
    cid = control_plane.command("start_session", "s1",
                                {"template": TEMPLATE, "user": USER, "name": "mine"})
    outcome = await control_plane.outcome(cid)
    assert outcome["type"] == "complete"
    assert outcome["payload"]["result"] == {}
    kinds = [f["type"] for f in control_plane.about(cid)]
    assert kinds == ["ack", "complete"]
    # a refusal is `failed` with a readable reason
    driver.fail_with = "the template cannot run here"
    cid2 = control_plane.command("start_session", "s2",
                                 {"template": TEMPLATE, "user": USER, "name": ""})
    failed = await control_plane.outcome(cid2)
    assert failed["type"] == "failed"
    assert failed["payload"]["reason"] == "the template cannot run here"
    # an unknown command type fails, it does not break the channel
    cid3 = control_plane.command("launch_rocket", None, {})
    assert (await control_plane.outcome(cid3))["type"] == "failed"
    assert control_plane.errors == [] and control_plane.connections == 1


@pytest_twisted.ensureDeferred
async def test_redelivered_command_runs_once(control_plane, agents, tmp_path):
    platform = FakePlatform()  # sessions outlive the agent, as containers do
    driver = FakeDriver(platform=platform)
    agent = agents.start(driver)
    await control_plane.wait_connected()
    data = {"template": TEMPLATE, "user": USER, "name": ""}
    cid = control_plane.command("start_session", "s1", data)
    await control_plane.outcome(cid)
    for _ in range(3):
        control_plane.command("start_session", "s1", data, command_id=cid)
    await until(lambda: len(control_plane.about(cid, "complete")) == 4, 5,
                what="every delivery answered")
    assert driver.calls == [("start_session", "s1")]
    # ...also across an agent restart: the journal is on disk (and s1 still runs)
    await agents.stop(agent)
    driver2 = FakeDriver(platform=platform)
    agents.start(driver2)
    await until(lambda: control_plane.connections == 2 and control_plane.control, 5,
                what="the restarted agent")
    await control_plane.wait_connected()
    control_plane.command("start_session", "s1", data, command_id=cid)
    await until(lambda: len(control_plane.about(cid, "complete")) == 5, 5,
                what="the stored outcome after restart")
    assert driver2.calls == []


@pytest_twisted.ensureDeferred
async def test_in_progress_command_is_only_acked_again(control_plane, agents):
    from twisted.internet import defer

    driver = FakeDriver()
    driver.hold = defer.Deferred()
    agents.start(driver)
    await control_plane.wait_connected()
    data = {"template": TEMPLATE, "user": USER, "name": ""}
    cid = control_plane.command("start_session", "s1", data)
    await until(lambda: control_plane.about(cid, "ack"), 5, what="ack")
    control_plane.command("start_session", "s1", data, command_id=cid)
    await until(lambda: len(control_plane.about(cid, "ack")) == 2, 5, what="second ack")
    assert control_plane.about(cid, "complete") == []
    driver.hold.callback(None)
    await control_plane.outcome(cid)
    assert driver.calls == [("start_session", "s1")]
    assert len(control_plane.about(cid, "complete")) == 1


@pytest_twisted.ensureDeferred
async def test_reconnects_within_two_seconds_of_the_control_plane_returning(
        control_plane, agents):
    agents.start(FakeDriver())
    await control_plane.wait_connected()
    port = control_plane.port
    await control_plane.stop()
    # down long enough for the backoff to reach its cap
    await sleep(3.0)
    back = reactor.seconds()
    control_plane.start(port)
    await control_plane.wait_connected(timeout=5)
    assert reactor.seconds() - back < 2.0
    assert control_plane.connections == 2
    assert [f["type"] for f in control_plane.frames].count("register") == 2


@pytest_twisted.ensureDeferred
async def test_wrong_token_is_retried_with_capped_backoff(control_plane, agents):
    agents.start(FakeDriver(), token="wrong")
    await until(lambda: len(control_plane.refusals) >= 3, 10, what="refusals")
    assert set(control_plane.refusals) == {401}
    assert control_plane.connections == 0


@pytest_twisted.ensureDeferred
async def test_session_status_and_outcomes_survive_a_disconnect(control_plane, agents):
    driver = FakeDriver()
    agent = agents.start(driver)
    await control_plane.wait_connected()
    port = control_plane.port
    await control_plane.stop()
    await until(lambda: agent.channel.link is None, 5, what="the agent noticing")
    driver.report_status("s9", "failed", "the application was killed by SIGKILL")
    control_plane.start(port)
    frame = await control_plane.wait_frame("session_status", session_id="s9")
    assert frame["payload"]["state"] == "failed"
    assert "SIGKILL" in frame["payload"]["reason"]


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_channel_normally(control_plane, agents):
    driver = FakeDriver()
    driver.add_running("s1")
    agent = agents.start(driver)
    await control_plane.wait_connected()
    await agents.stop(agent)
    status = await control_plane.wait_frame("session_status", session_id="s1")
    assert status["payload"]["state"] == "failed"
    await until(lambda: control_plane.closes, 5, what="the close")
    assert control_plane.closes[-1][0] == 1000
