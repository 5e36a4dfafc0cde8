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
    registered_client,
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
async def test_revoked_agent_is_disconnected(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-revoke")
    client = await registered_client(base, "a-revoke", token)
    await fleet.hub.agent_revoked("a-revoke")
    code, reason = await client.wait_closed()
    assert code == 4001 and "revoked" in reason
