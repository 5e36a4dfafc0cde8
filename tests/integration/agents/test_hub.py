"""The agent hub over real WebSockets and a real PostgreSQL: admission, frames, liveness.

The WebSocket peer here is a scripted agent (tests/support/hub_agents.py) speaking
docs/protocol.md frame by frame, so each misbehaviour can be produced on demand; the real
`twistd agent` is exercised end to end in tests/integration/test_lifecycle_e2e.py."""

import json

import pytest
import pytest_twisted
import treq

from tests.support.http import poll
from tests.support.hub_agents import (
    agent_status,
    make_agent,
    processed,
    registered_client,
    serve_hub,
)


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
    await processed(db, client, "agent-2")  # its heartbeat updates last_heartbeat
    # a second connection while this one answers pings is refused
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


HB = b'{"type": "heartbeat", "id": "x", "timestamp": "t", "payload": {"sessions": [], ' \
     b'"usage": %s}}'


@pytest.mark.parametrize("bad", [
    b"not json at all", b"[1, 2, 3]", b'{"type": "launch_missiles", "id": "x", "payload": {}}',
    b'{"type": "ack", "id": "x", "payload": {}}',
    b'{"type": "ack", "id": "x", "payload": {"command_id": "not-a-uuid"}}',
    b'{"type": "register", "id": "x", "payload": {"agent_id": "bad-1", "platform": "local", '
    b'"protocol_version": 1}}',
    # values no database or reader takes (issue 9, items 9 and 14)
    HB % b'{"sessions": NaN, "cpu": 0, "memory_gb": 0}',
    HB % b'{"sessions": 1, "cpu": Infinity}',
    HB % b'{"sessions": 1e400}',
    HB % (b'{"sessions": ' + b"9" * 400 + b"}"),
    HB % b'{"sessions": -1}',
    HB % b'{"sessions": "many"}',
    HB % (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    HB % (b'{"deep": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"),
    b'{"type": "session_progress", "id": "x", "timestamp": "t", "payload": {"session_id": '
    b'"6b1f3b7e-9a52-4f0c-9d8e-2b1d3c4e5f60", "message": "nul \\u0000 here"}}',
    b'{"type": "session_progress", "id": "x", "timestamp": "t", "payload": {"session_id": '
    b'"6b1f3b7e-9a52-4f0c-9d8e-2b1d3c4e5f60", "message": "half \\ud800 a pair"}}',
    b'{"type": "heartbeat", "id": "x", "timestamp": "t", "payload": {"usage": {}, '
    b'"sessions": [{"session_id": "6b1f3b7e-9a52-4f0c-9d8e-2b1d3c4e5f60", "state": "asleep"}]}}',
    b'{"type": "heartbeat", "id": "x", "timestamp": "t", "payload": {"usage": {}, '
    b'"sessions": "all of them"}}',
    b'{"type": "session_status", "id": "x", "timestamp": "t", "payload": {"session_id": '
    b'"6b1f3b7e-9a52-4f0c-9d8e-2b1d3c4e5f60", "state": "exploded", "reason": ""}}',
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
    await processed(db, good, "good-1")
    assert (await agent_status(db, "good-1"))[0] == "online"
    assert not good.closed.called
    good.close()
    # the closed agent was forgotten at once: it can connect again (no 409)
    again = await registered_client(base, "bad-1", token_bad)
    again.close()


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
async def test_revoked_agent_is_disconnected(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-revoke")
    client = await registered_client(base, "a-revoke", token)
    await fleet.hub.agent_revoked("a-revoke")
    code, reason = await client.wait_closed()
    assert code == 4001 and "revoked" in reason


@pytest.fixture
def patient_hub(db):
    """A hub whose heartbeat timeout is long: only arbitration can end a frozen link."""
    base, fleet, stop = serve_hub(db, heartbeat_timeout=60.0)
    yield base, fleet, db
    stop()


@pytest_twisted.ensureDeferred
async def test_a_second_connection_replaces_one_that_does_not_answer_a_ping(patient_hub):
    """Issue 10 item 9: the old connection of an agent id is a half-open socket (or a
    frozen process): it reads nothing, so it cannot answer. A new connection is not
    refused with 409 for ever: the old one is pinged, found dead within the probe
    deadline, closed with 4002 and replaced."""
    base, fleet, db = patient_hub
    agent_uuid, token = await make_agent(db, "a-frozen")
    old = await registered_client(base, "a-frozen", token, keepalive=False)
    old_conn = fleet.hub.links[agent_uuid].conn_id
    old.protocol.transport.pauseProducing()  # reads nothing from now on
    new = await registered_client(base, "a-frozen", token)
    assert fleet.hub.links[agent_uuid].conn_id != old_conn
    rows = await db.query("SELECT status, websocket_conn_id FROM agents WHERE id = %s",
                          (agent_uuid,))
    assert rows[0] == ("online", fleet.hub.links[agent_uuid].conn_id)
    await processed(db, new, "a-frozen")
    old.protocol.transport.resumeProducing()
    code, reason = await old.wait_closed()
    assert code in (4002, 1006), (code, reason)  # the close frame, or just the drop
    assert fleet.hub.links[agent_uuid].conn_id != old_conn
    new.close()


@pytest_twisted.ensureDeferred
async def test_the_hub_pings_its_agents(hub_server):
    """WebSocket pings on every agent connection (they find half-open sockets)."""
    from tests.support.polling import until

    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-pinged")
    client = await registered_client(base, "a-pinged", token)
    pings = []
    answer = client.protocol.onPing

    def on_ping(payload):
        pings.append(payload)
        answer(payload)

    client.protocol.onPing = on_ping
    await until(lambda: len(pings) >= 2, timeout=10, what="two pings from the hub")
    assert not client.closed.called
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_burst_of_frames_is_read_at_the_hubs_pace_not_cut_off(hub_server):
    """An agent may legitimately send far more frames at once than the hub handles in a
    moment (500 viewers' vnc_connect answers): past PAUSE_AT waiting frames the hub stops
    reading its socket and TCP holds the rest back; it is never disconnected for it, and
    every frame is handled, in order."""
    from streamspace.agents import ws
    from tests.support.hub_agents import make_session

    base, fleet, db = hub_server
    agent_uuid, token = await make_agent(db, "a-burst")
    client = await registered_client(base, "a-burst", token)
    sid = await make_session(db, state="running", agent_uuid=agent_uuid)
    client.reported[sid] = "running"
    burst = 4 * ws.PAUSE_AT
    link = fleet.hub.links[agent_uuid]
    paused = []
    original = link.transport.pauseProducing

    def pause():
        paused.append(True)
        original()

    link.transport.pauseProducing = pause
    for i in range(burst):  # each is an INSERT: slower to handle than to send
        client.frame("session_progress", {"session_id": sid, "message": f"step {i}"})
    await processed(db, client, "a-burst")
    assert not client.closed.called and paused  # read at the hub's pace, never cut off
    rows = await db.query("SELECT message FROM session_events WHERE session_id = %s "
                          "ORDER BY id", (sid,))
    assert [r[0] for r in rows] == [f"step {i}" for i in range(burst)]
    assert not link.reading_paused
    client.close()
