"""The executor and its journal: at most once per command id, across redelivery and restarts."""

import json

import pytest
from twisted.internet import defer, task

from agent.commands import Command, CommandExecutor
from agent.journal import CommandJournal
from agent.platforms.base import Capacity
from tests.support.fake_driver import FakeDriver, FakePlatform

TEMPLATE = {"name": "xterm", "cpu": 1, "memory_mb": 512,
            "platforms": {"local": {"command": "xterm"}}}
START = {"template": TEMPLATE, "user": {"id": "u1", "username": "alice"}, "name": "n"}
NOW = 1_795_000_000.0


def cmd(command_id, command_type="start_session", session_id="s1", data=None,
        deadline=None):
    return Command(command_id, command_type, session_id, data if data is not None else START,
                   deadline)


class Harness:
    def __init__(self, tmp_path, driver=None, max_entries=5000):
        self.path = tmp_path / "commands.jsonl"
        self.driver = driver or FakeDriver()
        self.sent = []
        self.journal = CommandJournal(self.path, max_entries)
        self.now = NOW
        self.clock = task.Clock()
        self.executor = CommandExecutor(self.driver, tunnels=None, journal=self.journal,
                                        emit=lambda t, p, buffered: self.sent.append((t, p)),
                                        server_now=lambda: self.now, clock=self.clock)

    def about(self, command_id):
        return [t for t, p in self.sent if p.get("command_id") == command_id]


def test_a_command_is_acked_run_and_completed(tmp_path):
    h = Harness(tmp_path)
    h.executor.handle(cmd("c1"))
    assert h.about("c1") == ["ack", "complete"]
    assert h.sent[-1][1]["result"] == {}
    assert h.driver.calls == [("start_session", "s1")]


def test_redelivery_answers_the_stored_outcome_without_running_again(tmp_path):
    h = Harness(tmp_path)
    h.executor.handle(cmd("c1"))
    h.executor.handle(cmd("c1"))
    h.executor.handle(cmd("c1"))
    assert h.about("c1") == ["ack", "complete", "complete", "complete"]
    assert h.driver.calls == [("start_session", "s1")]
    # failures are stored too
    h.driver.fail_with = "no room"
    h.executor.handle(cmd("c2", session_id="s2"))
    h.executor.handle(cmd("c2", session_id="s2"))
    assert h.about("c2") == ["ack", "failed", "failed"]
    assert [p["reason"] for t, p in h.sent if t == "failed"] == ["no room", "no room"]


def test_in_progress_commands_are_only_acked_again(tmp_path):
    h = Harness(tmp_path)
    h.driver.hold = defer.Deferred()
    h.executor.handle(cmd("c1"))
    h.executor.handle(cmd("c1"))
    assert h.about("c1") == ["ack", "ack"]
    h.driver.hold.callback(None)
    assert h.about("c1") == ["ack", "ack", "complete"]
    assert h.driver.calls == [("start_session", "s1")]


def test_the_journal_survives_a_restart(tmp_path):
    platform = FakePlatform()  # sessions that outlive the agent, as containers do
    h = Harness(tmp_path, FakeDriver(platform=platform))
    h.executor.handle(cmd("done"))
    h.driver.hold = defer.Deferred()
    h.executor.handle(cmd("interrupted", session_id="s2"))
    h.journal.close()  # the agent dies here, "interrupted" never finished
    h2 = Harness(tmp_path, FakeDriver(platform=platform))
    h2.driver.start()
    h2.executor.handle(cmd("done"))
    h2.executor.handle(cmd("interrupted", session_id="s2"))
    assert h2.about("done") == ["complete"]  # s1 still runs: the stored outcome holds
    assert h2.about("interrupted") == ["failed"]
    assert "restarted while running this command" in h2.sent[-1][1]["reason"]
    assert h2.driver.calls == []


def test_a_stored_start_is_not_replayed_for_a_session_that_no_longer_runs(tmp_path):
    """Issue 10 item 1: the start completed, the control plane never committed it, the
    agent restarted and reaped the session; the redelivered start must not say `complete`
    (the control plane would show `running` with nothing behind it)."""
    h = Harness(tmp_path)
    h.executor.handle(cmd("c1"))
    assert h.about("c1") == ["ack", "complete"]
    h.journal.close()
    h2 = Harness(tmp_path)  # a new agent run: its driver reaped everything
    h2.executor.handle(cmd("c1"))
    h2.executor.handle(cmd("c1"))
    assert h2.about("c1") == ["failed", "failed"]
    reason = h2.sent[0][1]["reason"]
    assert reason == ("this agent started the session but no longer runs it (the agent "
                      "restarted or the session ended since: it has no such session now), "
                      "so that success is not repeated")
    assert h2.driver.calls == []  # and nothing was run again
    assert CommandJournal(h2.path).get("c1").status == "failed"  # the truth is kept


def test_stored_outcomes_are_checked_against_what_the_driver_has_now(tmp_path):
    h = Harness(tmp_path)
    h.executor.handle(cmd("start"))
    h.executor.handle(cmd("hibernate", "hibernate_session", data={}))
    h.executor.handle(cmd("start", session_id="s1"))
    assert h.about("start")[-1] == "failed"  # started, but it is hibernated now
    assert "no longer runs it (it is hibernated now)" in h.sent[-1][1]["reason"]
    h.executor.handle(cmd("hibernate", "hibernate_session", data={}))
    assert h.about("hibernate") == ["ack", "complete", "complete"]  # still true
    h.executor.handle(cmd("wake", "wake_session", data={"template": TEMPLATE}))
    h.executor.handle(cmd("hibernate", "hibernate_session", data={}))
    assert h.about("hibernate")[-1] == "failed"
    assert "no longer keeps it (it is running now)" in h.sent[-1][1]["reason"]
    h.executor.handle(cmd("stop", "stop_session", data={}))
    h.executor.handle(cmd("stop", "stop_session", data={}))
    assert h.about("stop") == ["ack", "complete", "complete"]  # still gone
    h.executor.handle(cmd("again", session_id="s1"))
    h.executor.handle(cmd("stop", "stop_session", data={}))
    assert h.about("stop")[-1] == "failed"
    assert "stopped the session but has it again (it is running now)" in h.sent[-1][1]["reason"]
    # a stored failure is the truth about that command: answered as it was
    h.driver.fail_with = "no room"
    h.executor.handle(cmd("nope", session_id="s3"))
    h.executor.handle(cmd("nope", session_id="s3"))
    assert [p.get("reason") for t, p in h.sent if p.get("command_id") == "nope"][1:] == \
        ["no room", "no room"]


def test_a_redelivered_list_sessions_is_answered_from_the_driver_now(tmp_path):
    h = Harness(tmp_path)
    h.executor.handle(cmd("list", "list_sessions", None, {}))
    h.driver.add_running("s9")
    h.executor.handle(cmd("list", "list_sessions", None, {}))
    assert [p["result"]["sessions"] for t, p in h.sent if t == "complete"] == [
        [], [{"session_id": "s9", "state": "running"}]]


def test_late_commands_are_refused_and_shutdown_refuses_new_ones(tmp_path):
    h = Harness(tmp_path)
    h.executor.handle(cmd("late", deadline=NOW - 1))
    assert h.about("late") == ["ack", "failed"]
    assert "after its deadline" in h.sent[-1][1]["reason"]
    h.executor.accepting = False
    h.executor.handle(cmd("c2"))
    assert h.about("c2") == ["failed"] and h.sent[-1][1]["reason"] == "the agent is shutting down"
    assert h.driver.calls == []


def test_commands_for_one_session_run_in_order(tmp_path):
    h = Harness(tmp_path)
    h.driver.hold = defer.Deferred()
    h.executor.handle(cmd("start"))
    h.executor.handle(cmd("stop", "stop_session", data={}))
    h.executor.handle(cmd("other", session_id="s2"))  # another session is not held up...
    assert h.driver.calls == [("start_session", "s1"), ("start_session", "s2")]
    h.driver.hold.callback(None)
    assert h.driver.calls[-1] == ("stop_session", "s1")  # ...the stop waited for the start
    assert h.about("stop") == ["ack", "complete"]


def test_readable_failures(tmp_path):
    h = Harness(tmp_path, FakeDriver(Capacity(max_sessions=1)))
    h.driver.add_running("busy")
    h.executor.handle(cmd("full"))
    assert "already runs 1 of 1 sessions" in h.sent[-1][1]["reason"]
    h.executor.handle(cmd("bad", data={"template": {"name": "Bad Name!"}, "user": {"id": "u"}}))
    assert h.sent[-1][1]["reason"].startswith("invalid start_session command: template.name")
    h.executor.handle(cmd("nosid", "stop_session", session_id=None, data={}))
    assert h.sent[-1][1]["reason"] == "invalid stop_session command: stop_session needs a " \
                                      "session_id"
    h.executor.handle(cmd("what", "format_disk", data={}))
    assert h.sent[-1][1]["reason"] == "this agent does not know the command 'format_disk'"


def test_an_unexpected_crash_is_reported_without_internals(tmp_path):
    h = Harness(tmp_path)

    def boom(*a, **k):
        raise KeyError("secret internals")

    h.driver.list_sessions = boom
    h.executor.handle(cmd("c1", "list_sessions", None, {}))
    reason = h.sent[-1][1]["reason"]
    assert "internal error (KeyError)" in reason and "secret" not in reason


def test_stop_for_a_session_named_in_data(tmp_path):
    h = Harness(tmp_path)
    h.driver.add_running("orphan")
    h.executor.handle(cmd("c1", "stop_session", session_id=None,
                          data={"session_id": "orphan", "reason": "unknown"}))
    assert h.about("c1") == ["ack", "complete"]
    assert h.driver.calls == [("stop_session", "orphan")]


def test_list_sessions_and_other_results(tmp_path):
    h = Harness(tmp_path)
    h.executor.handle(cmd("c1"))
    h.executor.handle(cmd("c2", "list_sessions", None, {}))
    assert h.sent[-1][1]["result"] == {"sessions": [
        {"session_id": "s1", "state": "running"}]}
    h.executor.handle(cmd("c3", "hibernate_session", data={}))
    assert h.sent[-1] == ("complete", {"command_id": "c3", "result": {}})
    assert h.executor.driver.list_sessions()[0].state == "hibernated"
    h.executor.handle(cmd("c4", "wake_session", data={"template": TEMPLATE}))
    assert h.sent[-1] == ("complete", {"command_id": "c4", "result": {}})
    assert h.executor.driver.list_sessions()[0].state == "running"


def test_a_start_past_its_deadline_is_cancelled_and_fails_with_a_reason(tmp_path):
    h = Harness(tmp_path)
    h.driver.hold = defer.Deferred()
    h.executor.handle(cmd("c1", deadline=NOW + 30))
    # the driver got the deadline on the agent's own clock
    assert h.driver.deadlines["s1"] == pytest.approx(h.clock.seconds() + 30)
    h.clock.advance(29)
    assert h.about("c1") == ["ack"]
    h.clock.advance(1.5)
    assert h.about("c1") == ["ack", "failed"]
    assert "before the command's deadline" in h.sent[-1][1]["reason"]
    # cancelled, not abandoned: the driver's work was interrupted (and it cleaned up)
    assert h.driver.sessions == {} and h.driver.usage().sessions == 0


def test_the_journal_stays_bounded_and_tolerates_a_torn_line(tmp_path):
    h = Harness(tmp_path, max_entries=10)
    for i in range(50):
        h.executor.handle(cmd(f"c{i}", "list_sessions", None, {}))
    assert len(h.journal) == 10
    lines = h.path.read_text().splitlines()
    assert len(lines) < 2 * 10 * 2
    h.journal.close()
    with open(h.path, "a") as f:
        f.write('{"id": "torn", "sta')  # a crash mid-write
    again = CommandJournal(h.path, max_entries=10)
    assert again.get("c49").status == "complete"
    assert again.get("c0") is None and again.get("torn") is None
    assert json.loads(lines[-1])["id"] == "c49"


@pytest.mark.parametrize("payload, problem", [
    ({"command_type": "stop_session"}, "no command_id"),
    ({"command_id": "c", "command_type": 5}, "no command_type"),
    ({"command_id": "c", "command_type": "x", "data": []}, "data must be an object"),
    ({"command_id": "c", "command_type": "x", "deadline": "soon"}, "ISO 8601"),
])
def test_command_parsing(payload, problem):
    from streamspace_common.wire import ProtocolError

    with pytest.raises(ProtocolError, match=problem):
        Command.from_payload(payload)


class FakeTunnels:
    """Stands in for agent.tunnel.TunnelManager (real tunnels are tested against real
    WebSockets in tests/integration/agent/test_command_burst.py): opening takes a little
    clock time, or none."""

    def __init__(self, clock):
        self.clock, self.open_ids, self.opened = clock, set(), 0

    def open(self, tunnel_id, secret, endpoint, session_id):
        def opened():
            self.open_ids.add(tunnel_id)
            self.opened += 1

        if self.opened % 3 == 0:
            opened()
            return defer.succeed(None)
        return task.deferLater(self.clock, 0.001 * (self.opened % 7), opened)

    def close(self, tunnel_id, reason="closed by the control plane"):
        self.open_ids.discard(tunnel_id)
        return defer.succeed(None)


class SharedEventDriver(FakeDriver):
    """Starts wait for one shared event (a platform becoming ready, one image pull for
    several sessions), as drivers that wait on a watch do."""

    async def _held(self):
        if self.hold is not None:
            await self.hold


def test_a_burst_on_one_session_answers_every_command_in_order(tmp_path):
    """Issue 9 item 10: 500 viewers connecting and disconnecting on one session, with
    500 lifecycle commands interleaved, queued behind a start that takes its time. The
    per-session queue used to recurse once per waiter (RecursionError, commands never
    answered); now every command is answered once and lifecycle ones run in order."""
    h = Harness(tmp_path, SharedEventDriver())
    h.executor.tunnels = FakeTunnels(h.clock)
    h.driver.hold = defer.Deferred()
    cycle = ["start_session", "hibernate_session", "wake_session", "stop_session"]
    lifecycle, ids = [], []
    for i in range(500):
        ids.append(f"connect-{i}")
        h.executor.handle(cmd(ids[-1], "vnc_connect",
                              data={"tunnel_id": f"t{i}", "secret": "s"}))
        kind = cycle[i % 4]
        ids.append(f"{kind}-{i}")
        lifecycle.append((kind, "s1"))
        h.executor.handle(cmd(ids[-1], kind, data=START if kind != "stop_session" else {}))
        ids.append(f"disconnect-{i}")
        h.executor.handle(cmd(ids[-1], "vnc_disconnect", data={"tunnel_id": f"t{i}"}))
    h.clock.advance(1)
    h.driver.hold.callback(None)  # the first start finishes; 499 lifecycle commands wait
    h.clock.pump([0.01] * 100)
    for command_id in ids:
        assert h.about(command_id)[0] == "ack", command_id
        outcomes = [t for t in h.about(command_id) if t in ("complete", "failed")]
        assert len(outcomes) == 1, (command_id, h.about(command_id))
    assert h.driver.calls == lifecycle
    reasons = {p["reason"] for t, p in h.sent if t == "failed"}
    assert reasons <= {"the session is not running on this agent"}, reasons
    assert all(h.about(f"{cycle[i % 4]}-{i}")[-1] == "complete" for i in range(500))
    assert h.executor.running() == []
