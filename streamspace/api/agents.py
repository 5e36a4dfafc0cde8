"""/agents: agent records and tokens (admin), and the seed's token-authenticated register."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from streamspace.api import shapes
from streamspace.api.auth import bearer_token
from streamspace.api.body import (
    AGENT_ID,
    AGENT_ID_HELP,
    PLATFORM,
    PLATFORM_HELP,
    REGION,
    REGION_HELP,
    Field,
    query_choice,
    query_matching,
    read_json,
    validate,
)
from streamspace.api.errors import bad_request, conflict, not_found, unauthorized
from streamspace.auth import agent_tokens
from streamspace.db import agents
from streamspace.db import sessions as sessions_db
from streamspace.sessions.states import ACTIVE_STATES, FAILED, STOPPED, TERMINATED
from streamspace_common.capacity import parse_capacity

RESERVED_IDS = ("register",)  # would clash with POST /agents/register
STATUSES = ("online", "offline")



def check_capacity(name: str, value) -> dict:
    """The same check as the agent's register frame (streamspace_common.capacity)."""
    try:
        return parse_capacity(value)
    except ValueError as e:
        raise bad_request(str(e)) from None


_DESCRIPTION = {
    "platform": Field("string", required=True, pattern=PLATFORM, pattern_help=PLATFORM_HELP),
    "region": Field("string", pattern=f"({REGION})?", pattern_help=REGION_HELP),
    "capacity": Field("object", max_len=64, custom=check_capacity),
    "metadata": Field("object", max_len=64),
}
CREATE_FIELDS = {
    "agent_id": Field("string", required=True, pattern=AGENT_ID, pattern_help=AGENT_ID_HELP),
    **_DESCRIPTION,
}
REGISTER_FIELDS = {
    **CREATE_FIELDS,
    "platform": Field("string", pattern=PLATFORM, pattern_help=PLATFORM_HELP),
    "protocol_version": Field("integer", min=1, max=1000),
}


def twistd_path() -> str:
    """The `twistd` of the control plane's own installation (its virtualenv): what the
    Add-agent dialog's start command runs, so it works as pasted on this machine."""
    return str(Path(sys.executable).parent / "twistd")


def _agent_id(agent_id: str) -> str:
    if not re.fullmatch(AGENT_ID, agent_id):
        raise not_found("no such agent")
    return agent_id


async def _shape(api, agent_id: str) -> dict:
    row = await agents.get(api.ctx.db, agent_id, active_states=ACTIVE_STATES)
    if row is None:
        raise not_found("no such agent")
    return shapes.agent(row)


async def list_agents(api, request):
    await api.admin(request)
    rows = await agents.list_agents(
        api.ctx.db, active_states=ACTIVE_STATES,
        platform=query_matching(request, "platform", PLATFORM, PLATFORM_HELP),
        status=query_choice(request, "status", STATUSES),
        region=query_matching(request, "region", REGION, REGION_HELP))
    return api.ok(request, [shapes.agent(r) for r in rows])


async def get_agent(api, request, agent_id):
    await api.admin(request)
    return api.ok(request, await _shape(api, _agent_id(agent_id)))


async def create_agent(api, request):
    principal = await api.admin(request)
    body = validate(read_json(request), CREATE_FIELDS)
    if body["agent_id"].lower() in RESERVED_IDS:
        raise bad_request(f"`{body['agent_id']}` is a reserved name")
    token = agent_tokens.generate()

    async def work(cursor):
        created = await agents.create(
            cursor, agent_id=body["agent_id"], platform=body["platform"],
            region=body.get("region", ""), capacity=body.get("capacity", {}),
            metadata=body.get("metadata", {}), token_hash=agent_tokens.hash_token(token))
        if created is None:
            raise conflict("agent_exists", f"an agent `{body['agent_id']}` exists")
        await api.audit(cursor, request, principal, "agent.create", "agent", body["agent_id"],
                        details={"platform": body["platform"]})
        return await agents.fetch(cursor, body["agent_id"], active_states=ACTIVE_STATES)

    row = await api.ctx.db.transaction(work)
    request.setHeader(b"Location", f"/api/v1/agents/{row['agent_id']}".encode())
    # The only time the token is ever shown: it is stored hashed.
    return api.ok(request, {**shapes.agent(row), "token": token, "twistd": twistd_path()},
                  201)


async def rotate_token(api, request, agent_id):
    principal = await api.admin(request)
    agent_id = _agent_id(agent_id)
    token = agent_tokens.generate()

    async def work(cursor):
        current = await agents.lock(cursor, agent_id)
        if current is None:
            raise not_found("no such agent")
        await agents.set_token_hash(cursor, current["id"], agent_tokens.hash_token(token))
        await api.audit(cursor, request, principal, "agent.token_rotate", "agent", agent_id)

    await api.ctx.db.transaction(work)
    # A connection made with the old token must end (close code 4001).
    await api.notify("agent_hub", "agent_revoked", agent_id)
    return api.ok(request, {"agent_id": agent_id, "token": token, "twistd": twistd_path()})


async def delete_agent(api, request, agent_id):
    principal = await api.admin(request)
    agent_id = _agent_id(agent_id)

    async def work(cursor):
        current = await agents.lock(cursor, agent_id)
        if current is None:
            raise not_found("no such agent")
        held = await sessions_db.count_for_agent(cursor, current["id"],
                                                 (TERMINATED, FAILED, STOPPED))
        if held:
            raise conflict("agent_has_sessions",
                           f"{held} session(s) are still on this agent; delete them first")
        await agents.delete(cursor, current["id"])
        await api.audit(cursor, request, principal, "agent.delete", "agent", agent_id)

    await api.ctx.db.transaction(work)
    await api.notify("agent_hub", "agent_revoked", agent_id)
    return api.no_content(request)


async def register_agent(api, request):
    """An agent describes itself (platform, region, capacity, metadata), authenticated by
    its own token as `Authorization: Bearer <agent token>`; login tokens do not work here."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("send the agent token as `Authorization: Bearer <token>`")
    body = validate(read_json(request), REGISTER_FIELDS)
    agent_id = body["agent_id"]
    found = await agents.get_by_agent_id(api.ctx.db, agent_id)
    valid = found is not None and agent_tokens.verify(token, found["token_hash"])

    async def work(cursor):
        if not valid:
            await api.audit(cursor, request, None, "agent.register", "agent", agent_id,
                            success=False, actor_name=agent_id,
                            details={"reason": "bad_token"})
            return
        await agents.update_registration(
            cursor, found["id"], platform=body.get("platform"), region=body.get("region"),
            capacity=body.get("capacity"), metadata=body.get("metadata"),
            protocol_version=body.get("protocol_version"))
        await api.audit(cursor, request, None, "agent.register", "agent", agent_id,
                        actor_name=agent_id)

    if found is not None:
        await api.ctx.db.transaction(work)
    if not valid:
        raise unauthorized("unknown agent or wrong token")
    return api.ok(request, await _shape(api, agent_id))
