"""The agent hub and the command queue over real WebSockets and a real PostgreSQL.

The WebSocket peer here is a scripted test client speaking docs/protocol.md frame by frame
(it stands for a real agent, so each misbehaviour can be produced on demand); the real
`twistd agent` is exercised end to end in tests/integration/test_lifecycle_e2e.py."""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task

from streamspace.agents.service import build_fleet
from streamspace.auth import agent_tokens
from streamspace.web import ControlPlaneWeb, make_site
from tests.conftest import run
from tests.support.http import poll
from tests.support.polling import until
from tests.support.wsclient import connect


class _DatabaseStub:
    """What the fleet needs of DatabaseService in-process: the Database, already ready."""

    def __init__(self, db):
        self.db = db
        self.ready = defer.succeed(db)

    async def readiness(self):
        return True, "ok"


@pytest.fixture
def hub_server(db):
    fleet = build_fleet(reactor, _DatabaseStub(db), heartbeat_timeout=2.0, command_timeout=2.0,
                        heartbeat_interval=0.5, sweep_interval=0.2)
    fleet.service.startService()
    run(until(lambda: fleet.hub.accepting, what="the hub to accept agents"))
    site = make_site(ControlPlaneWeb(_DatabaseStub(db), websockets=fleet.websockets()))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"127.0.0.1:{port.getHost().port}"
    yield base, fleet, db
    run(_await(fleet.service.stopService()))
    run(_await(port.stopListening()))


async def _await(d):
    return await d


async def make_agent(db, agent_id="agent-1", platform="local", region="", capacity=None):
    token = agent_tokens.generate()
    rows = await db.query(
        "INSERT INTO agents (agent_id, platform, region, token_hash, capacity) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (agent_id, platform, region, agent_tokens.hash_token(token),
         json.dumps(capacity or {})))
    return str(rows[0][0]), token


async def make_session(db, template_cpu=1, template_mem=512):
    user = await db.query("INSERT INTO users (username, password_hash) VALUES "
                          "('u' || substr(md5(random()::text), 1, 8), 'x') RETURNING id")
    tpl = await db.query("SELECT id FROM templates WHERE name = 'tpl'")
    if not tpl:
        tpl = await db.query(
            "INSERT INTO templates (name, display_name, cpu, memory_mb, platforms) "
            "VALUES ('tpl', 'Template', %s, %s, %s) RETURNING id",
            (template_cpu, template_mem, json.dumps({"local": {"command": "xterm"}})))
    rows = await db.query(
        "INSERT INTO sessions (user_id, template_id, template_name) VALUES (%s, %s, 'tpl') "
        "RETURNING id", (user[0][0], tpl[0][0]))
    return str(rows[0][0])


async def state_of(db, session_id):
    rows = await db.query("SELECT state, error FROM sessions WHERE id = %s", (session_id,))
    return rows[0]


async def agent_status(db, agent_id):
    rows = await db.query("SELECT status, last_heartbeat FROM agents WHERE agent_id = %s",
                          (agent_id,))
    return rows[0]


async def registered_client(base, agent_id, token, sessions=None, capacity=None,
                            keepalive=True):
    client = await connect(f"ws://{base}/api/v1/agent/connect?agent_id={agent_id}",
                           headers={"Authorization": f"Bearer {token}"})
    client.frame("register", {"agent_id": agent_id, "platform": "local", "region": "",
                              "protocol_version": 1, "capacity": capacity or {},
                              "sessions": sessions or [], "metadata": {"hostname": "test"}})
    reply = await client.next_of_type("registered")
    assert reply["payload"]["agent_id"] == agent_id
    if keepalive:  # heartbeats like a real agent, so only the silence test goes silent
        beat = task.LoopingCall(lambda: client.frame("heartbeat", {"usage": {}, "sessions": []}))
        beat.start(0.5, now=False)
        client.closed.addBoth(lambda r: (beat.running and beat.stop(), r)[1])
    return client


@pytest_twisted.ensureDeferred
async def test_bad_credentials_are_refused_before_upgrade_and_change_nothing(hub_server):
    base, _, db = hub_server
    _, token = await make_agent(db)
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for agent_id, auth in [("agent-1", None), ("agent-1", "Bearer wrong"),
                           ("nobody", f"Bearer {token}"), ("agent-1", token)]:
        h = dict(headers)
        if auth:
            h["Authorization"] = auth
        r = await treq.get(f"http://{base}/api/v1/agent/connect?agent_id={agent_id}", headers=h)
        body = json.loads(await r.content())
        assert r.code == 401, (agent_id, auth)
        assert body["error"]["code"] == "unauthorized"
    r = await treq.get(f"http://{base}/api/v1/agent/connect", headers=headers)
    assert r.code == 400
    assert (await agent_status(db, "agent-1"))[0] == "offline"


@pytest_twisted.ensureDeferred
async def test_register_heartbeat_and_duplicate_refused(hub_server):
    base, _, db = hub_server
    await make_agent(db)
    _, token = await make_agent(db, "agent-2")
    client = await registered_client(base, "agent-2", token)
    status, first = await agent_status(db, "agent-2")
    assert status == "online" and first is not None
    client.frame("heartbeat", {"usage": {"sessions": 0}, "sessions": []})

    async def beat_recorded():
        return (await agent_status(db, "agent-2"))[1] > first

    await poll(beat_recorded, what="heartbeat to update last_heartbeat")
    r = await treq.get(f"http://{base}/api/v1/agent/connect?agent_id=agent-2",
                       headers={"Authorization": f"Bearer {token}", "Upgrade": "websocket",
                                "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.code == 409
    client.close()
    await client.wait_closed()

    async def offline():
        return (await agent_status(db, "agent-2"))[0] == "offline"

    await poll(offline, what="agent to be marked offline after it closed")


@pytest.mark.parametrize("bad", [
    b"not json at all", b"[1, 2, 3]", b'{"type": "launch_missiles", "id": "x", "payload": {}}',
    b'{"type": "ack", "id": "x", "payload": {}}',
    b'{"type": "ack", "id": "x", "payload": {"command_id": "not-a-uuid"}}',
    b'{"type": "register", "id": "x", "payload": {"agent_id": "bad-1", "platform": "local", '
    b'"protocol_version": 1}}',
])
@pytest_twisted.ensureDeferred
async def test_garbage_disconnects_only_that_agent(hub_server, bad):
    base, _, db = hub_server
    _, token_bad = await make_agent(db, "bad-1")
    _, token_good = await make_agent(db, "good-1")
    good = await registered_client(base, "good-1", token_good)
    bad_client = await registered_client(base, "bad-1", token_bad)
    bad_client.send_raw(bad)
    code, reason = await bad_client.wait_closed()
    assert code == 4000, (code, reason)
    assert reason

    async def bad_offline():
        return (await agent_status(db, "bad-1"))[0] == "offline"

    await poll(bad_offline, what="the misbehaving agent to be marked offline")
    # the hub still serves the other agent: its next heartbeat is recorded
    _, before = await agent_status(db, "good-1")
    good.frame("heartbeat", {"usage": {}, "sessions": []})

    async def recorded():
        status, beat = await agent_status(db, "good-1")
        return status == "online" and beat > before

    await poll(recorded, what="the well-behaved agent's heartbeat")
    assert not good.closed.called
    good.close()


@pytest_twisted.ensureDeferred
async def test_binary_and_oversize_frames_disconnect(hub_server):
    base, _, db = hub_server
    _, token = await make_agent(db, "big-1")
    client = await registered_client(base, "big-1", token)
    client.send_raw(b"\x00\x01", binary=True)
    code, _ = await client.wait_closed()
    assert code == 4000
    client = await registered_client(base, "big-1", token)
    client.send_raw(b"x" * (70 * 1024))
    code, _ = await client.wait_closed()
    assert code in (1006, 1009, 4000)  # autobahn drops an oversize peer outright

    async def offline():
        return (await agent_status(db, "big-1"))[0] == "offline"

    await poll(offline, what="the oversize sender to be marked offline")


@pytest_twisted.ensureDeferred
async def test_silent_agent_is_disconnected_and_marked_offline(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "quiet-1")
    client = await registered_client(base, "quiet-1", token, keepalive=False)
    code, reason = await client.wait_closed(timeout=10)
    assert code == 4003 and "heartbeat" in reason

    async def offline():
        return (await agent_status(db, "quiet-1"))[0] == "offline"

    await poll(offline, what="the silent agent to be marked offline")


@pytest_twisted.ensureDeferred
async def test_start_command_ack_complete_makes_session_running(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-run")
    client = await registered_client(base, "a-run", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_created(sid)
    assert (await state_of(db, sid))[0] == "scheduled"
    cmd = await client.next_of_type("command")
    p = cmd["payload"]
    assert p["command_type"] == "start_session" and p["session_id"] == sid
    assert p["data"]["template"]["platforms"]["local"]["command"] == "xterm"
    client.frame("ack", {"command_id": p["command_id"]})

    async def starting():
        return (await state_of(db, sid))[0] == "starting"

    await poll(starting, what="session to be starting after ack")
    client.frame("complete", {"command_id": p["command_id"],
                              "result": {}})

    async def running():
        return (await state_of(db, sid))[0] == "running"

    await poll(running, what="session to be running after complete")
    rows = await db.query("SELECT status, sent_at, acked_at, completed_at FROM agent_commands "
                          "WHERE id = %s", (p["command_id"],))
    assert rows[0][0] == "completed" and all(rows[0][1:])
    events = await db.query("SELECT state FROM session_events WHERE session_id = %s ORDER BY id",
                            (sid,))
    assert [e[0] for e in events] == ["scheduled", "starting", "running"]
    client.close()


@pytest_twisted.ensureDeferred
async def test_progress_from_the_driver_becomes_an_event_without_a_move(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-progress")
    _, other_token = await make_agent(db, "a-other")
    client = await registered_client(base, "a-progress", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_created(sid)
    await client.next_of_type("command")
    other = await registered_client(base, "a-other", other_token)
    # another agent cannot write into this session's events
    other.frame("session_progress", {"session_id": sid, "message": "forged"})
    client.frame("session_progress", {"session_id": sid,
                                      "message": "pulling image example/desktop: 40%"})

    async def progressed():
        rows = await db.query("SELECT state, message FROM session_events WHERE session_id = %s "
                              "ORDER BY id", (sid,))
        return rows if len(rows) >= 2 else None

    events = await poll(progressed, what="the progress event")
    assert [tuple(e) for e in events][1:] == [("scheduled", "pulling image example/desktop: 40%")]
    assert (await state_of(db, sid))[0] == "scheduled"
    client.close()
    other.close()


@pytest_twisted.ensureDeferred
async def test_unanswered_command_times_out_and_fails_the_session(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-slow")
    client = await registered_client(base, "a-slow", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_created(sid)
    cmd = await client.next_of_type("command")
    client.frame("ack", {"command_id": cmd["payload"]["command_id"]})

    async def failed():
        state, error = await state_of(db, sid)
        return error if state == "failed" else None

    error = await poll(failed, timeout=15, what="the session to fail on command timeout")
    assert "timed out" in error
    rows = await db.query("SELECT status FROM agent_commands WHERE id = %s",
                          (cmd["payload"]["command_id"],))
    assert rows[0][0] == "timeout"
    # a late completion changes nothing
    client.frame("complete", {"command_id": cmd["payload"]["command_id"], "result": {}})
    client.frame("heartbeat", {"usage": {}, "sessions": []})
    assert (await state_of(db, sid))[0] == "failed"
    client.close()


@pytest_twisted.ensureDeferred
async def test_commands_for_offline_agent_wait_and_are_redelivered(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-back")
    client = await registered_client(base, "a-back", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_created(sid)
    first = await client.next_of_type("command")
    client.close()
    await client.wait_closed()
    # reconnects: the unanswered command comes again with the same id (agent dedupes)
    client = await registered_client(base, "a-back", token)
    again = await client.next_of_type("command")
    assert again["payload"]["command_id"] == first["payload"]["command_id"]
    client.frame("complete", {"command_id": again["payload"]["command_id"],
                              "result": {}})

    async def running():
        return (await state_of(db, sid))[0] == "running"

    await poll(running, what="the redelivered command to complete")
    client.close()


@pytest_twisted.ensureDeferred
async def test_capacity_respected_under_concurrent_creates(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-small", capacity={"max_sessions": 2})
    client = await registered_client(base, "a-small", token, capacity={"max_sessions": 2})
    sids = [await make_session(db) for _ in range(6)]
    await defer.gatherResults([defer.Deferred.fromCoroutine(fleet.lifecycle.session_created(s))
                               for s in sids])
    states_ = [await state_of(db, s) for s in sids]
    scheduled = [s for s in states_ if s[0] == "scheduled"]
    failed = [s for s in states_ if s[0] == "failed"]
    assert len(scheduled) == 2 and len(failed) == 4
    assert all("capacity" in f[1] for f in failed)
    client.close()


@pytest_twisted.ensureDeferred
async def test_agent_offline_makes_sessions_unreachable_and_reconcile(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-rec")
    client = await registered_client(base, "a-rec", token)
    kept, lost = await make_session(db), await make_session(db)
    for sid in (kept, lost):
        await fleet.lifecycle.session_created(sid)
        cmd = await client.next_of_type("command")
        client.frame("complete", {"command_id": cmd["payload"]["command_id"],
                                  "result": {}})

    async def both_running():
        return [(await state_of(db, s))[0] for s in (kept, lost)] == ["running", "running"]

    await poll(both_running, what="both sessions running")
    client.close()
    await client.wait_closed()

    async def unreachable():
        return [(await state_of(db, s))[0] for s in (kept, lost)] == ["unreachable"] * 2

    await poll(unreachable, what="sessions to be unreachable while the agent is away")
    client = await registered_client(
        base, "a-rec", token,
        sessions=[{"session_id": kept, "state": "running"}])

    async def reconciled():
        return [(await state_of(db, s))[0] for s in (kept, lost)] == ["running", "failed"]

    await poll(reconciled, what="reconciliation after re-register")
    assert "no longer runs" in (await state_of(db, lost))[1]
    client.close()


@pytest_twisted.ensureDeferred
async def test_revoked_agent_is_disconnected(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-revoke")
    client = await registered_client(base, "a-revoke", token)
    await fleet.hub.agent_revoked("a-revoke")
    code, reason = await client.wait_closed()
    assert code == 4001 and "revoked" in reason


@pytest_twisted.ensureDeferred
async def test_session_stuck_in_a_transitional_state_fails_with_a_reason(hub_server):
    base, fleet, db = hub_server
    sid = await make_session(db)
    await db.execute("UPDATE sessions SET state = 'waking', "
                     "state_changed_at = now() - interval '1 hour' WHERE id = %s", (sid,))
    await fleet.lifecycle.sweep()
    state, error = await state_of(db, sid)
    assert state == "failed" and "waking" in error and "longer than" in error


@pytest_twisted.ensureDeferred
async def test_a_session_whose_scheduling_was_lost_is_scheduled_by_the_sweep(hub_server):
    """The API committed the session but the control plane stopped before scheduling it:
    nothing is lost, the sweep picks it up."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-sweep")
    client = await registered_client(base, "a-sweep", token)
    sid = await make_session(db)
    await db.execute("UPDATE sessions SET created_at = now() - interval '1 minute' "
                     "WHERE id = %s", (sid,))
    await fleet.lifecycle.sweep()
    assert (await state_of(db, sid))[0] == "scheduled"
    cmd = await client.next_of_type("command")
    assert cmd["payload"]["session_id"] == sid
    client.close()
