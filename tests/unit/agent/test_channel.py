"""The agent's protocol logic with a fake link and a task.Clock: no sockets, exact timing."""

import json

import pytest
from twisted.internet import task

from agent.channel import REGISTER_TIMEOUT, AgentChannel
from agent.platforms.base import Capacity, VncEndpoint
from streamspace_common.wire import iso_utc
from tests.support.fake_driver import FakeDriver


class FakeLink:
    """A link that, like autobahn's protocol, can no longer send once closing."""

    def __init__(self):
        self.sent, self.closed = [], None

    def send_text(self, text):
        if self.closed is not None:
            return False
        self.sent.append(json.loads(text))
        return True

    def close(self, code, reason):
        self.closed = (code, reason)

    def types(self):
        return [f["type"] for f in self.sent]


@pytest.fixture
def setup():
    clock = task.Clock()
    clock.advance(1_795_000_000)
    driver = FakeDriver(Capacity(max_sessions=4, max_cpu=8, max_memory_gb=16),
                        VncEndpoint("127.0.0.1", 5910))
    channel = AgentChannel(agent_id="agent-1", platform_name="local", region="eu",
                           driver=driver, clock=clock, heartbeat_interval=10,
                           metadata={"hostname": "h"})
    commands = []
    channel.command_handler = commands.append
    return clock, driver, channel, commands


def registered(link_channel, clock, interval=10, skew=0.0):
    return json.dumps({"type": "registered", "id": "r", "timestamp": iso_utc(clock.seconds()),
                       "payload": {"agent_id": "agent-1", "heartbeat_interval": interval,
                                   "server_time": iso_utc(clock.seconds() + skew)}})


def test_register_is_first_and_carries_what_the_agent_runs(setup):
    clock, driver, channel, _ = setup
    driver.add_running("s1")
    link = FakeLink()
    channel.link_opened(link)
    [reg] = link.sent
    assert reg["type"] == "register"
    assert reg["payload"] == {
        "agent_id": "agent-1", "platform": "local", "region": "eu", "protocol_version": 1,
        "capacity": {"max_sessions": 4, "max_cpu": 8, "max_memory_gb": 16},
        "sessions": [{"session_id": "s1", "state": "running"}],
        "metadata": {"hostname": "h"}}


def test_heartbeats_start_after_registered_at_the_shorter_interval(setup):
    clock, driver, channel, _ = setup
    link = FakeLink()
    channel.link_opened(link)
    clock.advance(REGISTER_TIMEOUT - 1)
    assert link.types() == ["register"]  # nothing before `registered`
    channel.link_message(link, registered(channel, clock, interval=4))
    clock.advance(3.9)
    assert link.types() == ["register"]
    clock.advance(0.1)
    assert link.types() == ["register", "heartbeat"]
    clock.pump([4, 4])
    assert link.types().count("heartbeat") == 3
    beat = link.sent[-1]["payload"]
    assert beat == {"usage": {"sessions": 0, "cpu": 0.0, "memory_gb": 0.0}, "sessions": []}
    # the link goes away: no more heartbeats
    channel.link_closed(link, 1006, "gone")
    clock.advance(60)
    assert link.types().count("heartbeat") == 3


def test_the_configured_interval_wins_when_shorter(setup):
    clock, driver, channel, _ = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock, interval=30))
    assert channel.heartbeat_interval == 10
    clock.advance(10)
    assert link.types() == ["register", "heartbeat"]


def test_no_registered_answer_closes_the_connection(setup):
    clock, _, channel, _ = setup
    link = FakeLink()
    channel.link_opened(link)
    clock.advance(REGISTER_TIMEOUT)
    assert link.closed[0] == 4000
    channel.link_closed(link, 4000, "no registered")
    assert channel.failures == 1


@pytest.mark.parametrize("text, reason", [
    ("{oops", "not valid JSON"),
    ('{"type": "hello", "id": "x", "timestamp": "2026-01-01T00:00:00Z", "payload": {}}',
     "unknown frame type"),
    ('{"type": "command", "id": "x", "timestamp": "2026-01-01T00:00:00Z", "payload": {}}',
     "command payload has no"),
])
def test_protocol_errors_close_with_4000_and_the_reason(setup, text, reason):
    clock, _, channel, commands = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, text)
    assert link.closed[0] == 4000 and reason in link.closed[1]
    assert commands == []


def test_registered_for_another_agent_is_a_protocol_error(setup):
    clock, _, channel, _ = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock).replace("agent-1", "agent-2"))
    assert link.closed[0] == 4000 and not channel.registered


def test_a_command_with_bad_fields_fails_instead_of_closing(setup):
    clock, _, channel, commands = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock))
    channel.link_message(link, json.dumps({
        "type": "command", "id": "x", "timestamp": iso_utc(clock.seconds()),
        "payload": {"command_id": "c1", "command_type": "stop_session", "session_id": 7,
                    "data": {}, "deadline": None}}))
    assert link.closed is None and commands == []
    assert link.sent[-1]["type"] == "failed"
    assert link.sent[-1]["payload"]["command_id"] == "c1"


def test_commands_reach_the_handler_and_deadlines_use_the_server_clock(setup):
    clock, _, channel, commands = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock, skew=120))
    assert channel.server_now() == pytest.approx(clock.seconds() + 120, abs=0.01)
    channel.link_message(link, json.dumps({
        "type": "command", "id": "x", "timestamp": iso_utc(clock.seconds()),
        "payload": {"command_id": "c1", "command_type": "list_sessions", "session_id": None,
                    "data": {}, "deadline": "2026-11-23T13:00:00Z"}}))
    [command] = commands
    assert command.command_id == "c1" and command.deadline is not None


def test_outcomes_wait_for_the_next_registration_acks_do_not(setup):
    clock, _, channel, _ = setup
    channel.emit("ack", {"command_id": "c1"}, False)
    channel.emit("complete", {"command_id": "c1", "result": {}})
    channel.session_status("s1", "failed", "the application was killed by SIGKILL")
    link = FakeLink()
    channel.link_opened(link)
    assert link.types() == ["register"]  # never before register, never before registered
    channel.link_message(link, registered(channel, clock))
    assert link.types() == ["register", "complete", "session_status"]
    assert link.sent[2]["payload"] == {"session_id": "s1", "state": "failed",
                                       "reason": "the application was killed by SIGKILL"}


def test_driver_status_changes_are_sent_at_once_when_connected(setup):
    clock, driver, channel, _ = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock))
    driver.report_status("s2", "stopped", "the application exited")
    assert link.sent[-1]["type"] == "session_status"
    assert link.sent[-1]["payload"]["state"] == "stopped"


def test_a_registered_connection_resets_the_failure_count(setup):
    clock, _, channel, _ = setup
    channel.link_failed("refused")
    channel.link_failed("401")
    assert channel.failures == 2
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock))
    assert channel.failures == 0
    channel.link_closed(link, 1006, "lost")
    assert channel.failures == 0  # it had worked: reconnect fast


def test_a_closing_link_never_raises_and_outcomes_wait_for_the_next_one(setup):
    """Issue 10 item 10: between our close frame and the close itself, heartbeats and
    outcomes used to raise out of autobahn ("Unhandled error in Deferred" at every
    shutdown) and the outcome was lost."""
    clock, driver, channel, _ = setup
    link = FakeLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock, interval=1))
    clock.advance(1)
    assert link.types() == ["register", "heartbeat"]
    channel.close(1000, "agent shutting down")  # closing, not closed yet
    clock.advance(5)  # heartbeats fire into the closing link: nothing raises
    channel.emit("ack", {"command_id": "c1"}, False)
    channel.emit("complete", {"command_id": "c1", "result": {}})
    channel.session_status("s1", "failed", "the agent was shut down")
    assert link.types() == ["register", "heartbeat"]
    assert list(channel.outbox) == [
        ("complete", {"command_id": "c1", "result": {}}),
        ("session_status", {"session_id": "s1", "state": "failed",
                            "reason": "the agent was shut down"})]
    channel.link_closed(link, 1000, "")
    again = FakeLink()
    channel.link_opened(again)
    channel.link_message(again, registered(channel, clock))
    assert again.types() == ["register", "complete", "session_status"]
    assert not channel.outbox


def test_an_outbox_flush_cut_short_keeps_the_rest(setup):
    clock, _, channel, _ = setup
    for i in range(3):
        channel.emit("complete", {"command_id": f"c{i}", "result": {}})

    class OneFrameLink(FakeLink):
        def send_text(self, text):
            sent = super().send_text(text)
            if len(self.sent) == 2:  # register, then one outcome: the link starts closing
                self.closed = (1006, "gone")
            return sent

    link = OneFrameLink()
    channel.link_opened(link)
    channel.link_message(link, registered(channel, clock))
    assert link.types() == ["register", "complete"]
    assert [p["command_id"] for _, p in channel.outbox] == ["c1", "c2"]


def test_a_refused_upgrade_says_what_to_check(setup):
    from twisted.logger import capturedLogs, formatEvent

    _, _, channel, _ = setup
    with capturedLogs() as events:
        channel.link_failed("WebSocket connection upgrade failed [409]: Conflict")
        channel.link_failed("WebSocket connection upgrade failed [401]: Unauthorized")
    lines = [formatEvent(e) for e in events]
    assert "has a live connection for agent agent-1, which answers its pings: is another " \
           "agent running with this AGENT_ID?" in lines[0]
    assert "check AGENT_ID and AGENT_TOKEN/AGENT_TOKEN_FILE" in lines[1]
    assert channel.failures == 2  # both count: the backoff grows
