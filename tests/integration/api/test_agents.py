"""Agents: records and tokens (shown once, stored hashed), rotation, register, delete."""

from __future__ import annotations

import pytest_twisted

from streamspace.auth import agent_tokens
from streamspace.db import agents as agents_db
from tests.integration.api.support import (
    count,
    make_session,
    make_template,
    make_user,
    token_for,
)


@pytest_twisted.ensureDeferred
async def test_create_list_get_rotate_register_delete(client, db):
    admin = await make_user(db, "root", role="admin")
    at = token_for(admin)
    r = await client.post("/api/v1/agents", {"agent_id": "k8s-prod-us-east-1",
                                             "platform": "kubernetes", "region": "us-east-1"},
                          token=at)
    assert r.status == 201, r.body
    token = r.json["token"]
    client.secrets.add(token)  # never shown again
    assert r.json["status"] == "offline" and r.json["active_sessions"] == 0
    stored = await agents_db.get_by_agent_id(db, "k8s-prod-us-east-1")
    assert stored["token_hash"] == agent_tokens.hash_token(token) != token
    dup = await client.post("/api/v1/agents", {"agent_id": "k8s-prod-us-east-1",
                                               "platform": "kubernetes"}, token=at)
    assert dup.status == 409

    listed = await client.get("/api/v1/agents", token=at)
    assert [a["agent_id"] for a in listed.json] == ["k8s-prod-us-east-1"]
    seed_shape = {"agent_id", "platform", "status", "region", "capacity", "last_heartbeat",
                  "active_sessions", "metadata", "created_at", "updated_at"}
    assert seed_shape <= set(listed.json[0])
    assert (await client.get("/api/v1/agents?platform=local", token=at)).json == []
    assert len((await client.get("/api/v1/agents?status=offline&region=us-east-1",
                                 token=at)).json) == 1
    assert (await client.get("/api/v1/agents?status=sleeping", token=at)).status == 400

    reg = {"agent_id": "k8s-prod-us-east-1", "platform": "kubernetes", "region": "us-east-1",
           "capacity": {"max_sessions": 100, "max_cpu": 100, "max_memory_gb": 256},
           "metadata": {"hostname": "node-1"}, "protocol_version": 1}
    r = await client.post("/api/v1/agents/register", reg, token=token)
    assert r.status == 200, r.body
    assert r.json["capacity"]["max_sessions"] == 100 and r.json["protocol_version"] == 1
    # neither a login token nor a wrong token registers
    assert (await client.post("/api/v1/agents/register", reg, token=at)).status == 401
    assert (await client.post("/api/v1/agents/register", reg)).status == 401
    other = {**reg, "agent_id": "someone-else"}
    assert (await client.post("/api/v1/agents/register", other, token=token)).status == 401

    rot = await client.post("/api/v1/agents/k8s-prod-us-east-1/token", token=at)
    assert rot.status == 200 and rot.json["token"] != token
    client.secrets.add(rot.json["token"])
    assert (await client.post("/api/v1/agents/register", reg, token=token)).status == 401
    assert (await client.post("/api/v1/agents/register", reg, token=rot.json["token"])
            ).status == 200

    one = await client.get("/api/v1/agents/k8s-prod-us-east-1", token=at)
    assert one.status == 200 and one.json["metadata"] == {"hostname": "node-1"}
    assert (await client.get("/api/v1/agents/nope", token=at)).status == 404
    assert (await client.delete("/api/v1/agents/k8s-prod-us-east-1", token=at)).status == 204
    assert (await client.get("/api/v1/agents/k8s-prod-us-east-1", token=at)).status == 404
    actions = [r[0] for r in await db.query(
        "SELECT action FROM audit_log WHERE target_type = 'agent' AND success ORDER BY id")]
    assert actions == ["agent.create", "agent.register", "agent.token_rotate",
                       "agent.register", "agent.delete"]
    # wrong tokens for a known agent are audited (the login token, the rotated-out one)
    assert await count(db, "audit_log", "action = 'agent.register' AND NOT success") == 2


@pytest_twisted.ensureDeferred
async def test_agent_holding_sessions_is_not_deleted(client, db, ctx):
    revoked = []

    class Hub:
        async def agent_revoked(self, agent_id):
            revoked.append(agent_id)

    ctx.extras["agent_hub"] = Hub()
    admin, alice = await make_user(db, "root", role="admin"), await make_user(db, "alice")
    at = token_for(admin)
    r = await client.post("/api/v1/agents", {"agent_id": "local-1", "platform": "local"},
                          token=at)
    sid = await make_session(db, alice, await make_template(db), state="running",
                             agent_uuid=r.json["id"])
    assert (await client.get("/api/v1/agents/local-1", token=at)).json["active_sessions"] == 1
    d = await client.delete("/api/v1/agents/local-1", token=at)
    assert d.status == 409 and d.code == "agent_has_sessions"
    await db.execute("UPDATE sessions SET state = 'failed' WHERE id = %s", (sid,))
    assert (await client.delete("/api/v1/agents/local-1", token=at)).status == 204
    assert revoked == ["local-1"]


@pytest_twisted.ensureDeferred
async def test_agent_validation(client, db):
    at = token_for(await make_user(db, "root", role="admin"))
    for body in ({"agent_id": "register", "platform": "local"},
                 {"agent_id": "has space", "platform": "local"},
                 {"agent_id": "a", "platform": "Local!"},
                 {"agent_id": "a"},
                 {"agent_id": "a", "platform": "local", "capacity": []},
                 {"agent_id": "a", "platform": "local", "token": "mine"}):
        r = await client.post("/api/v1/agents", body, token=at)
        assert r.status == 400, (body, r.body)
    assert await count(db, "agents") == 0
    assert (await client.post("/api/v1/agents/nope/token", token=at)).status == 404
    assert (await client.delete("/api/v1/agents/nope", token=at)).status == 404


@pytest_twisted.ensureDeferred
async def test_capacity_is_validated_like_the_register_frame(client, db):
    """Issue 9 item 8: the REST API accepted capacities that stopped the scheduler."""
    at = token_for(await make_user(db, "root", role="admin"))
    for capacity, words in (("4 cores", "must be an object"),
                            ({"max_sessions": "x"}, "capacity.max_sessions must be a number"),
                            ({"max_sessions": -2}, "between 0 and"),
                            ({"max_cpu": True}, "capacity.max_cpu must be a number"),
                            ({"cpu": "4000m"}, "unknown field(s) cpu")):
        r = await client.post("/api/v1/agents", {"agent_id": "a1", "platform": "local",
                                                 "capacity": capacity}, token=at)
        assert r.status == 400 and words in r.json["error"]["message"], (capacity, r.body)
    assert await count(db, "agents") == 0
    r = await client.post("/api/v1/agents", {"agent_id": "a1", "platform": "local",
                                             "capacity": {"max_sessions": 2}}, token=at)
    assert r.status == 201, r.body
    client.secrets.add(r.json["token"])
    assert r.json["capacity"] == {"max_sessions": 2, "max_cpu": 0.0, "max_memory_gb": 0.0}
    bad = await client.post("/api/v1/agents/register",
                            {"agent_id": "a1", "capacity": {"max_sessions": "x"}},
                            token=r.json["token"])
    assert bad.status == 400
    row = await agents_db.get_by_agent_id(db, "a1")
    assert row["capacity"] == {"max_sessions": 2, "max_cpu": 0.0, "max_memory_gb": 0.0}
