"""/sessions: create, list, read, hibernate/wake/restart and delete sessions.

HTTP only: validate the request, call the domain (streamspace.sessions.requests, which
writes the change, its command and its audit row in one transaction), shape the answer.
Once committed, the session lifecycle (`ctx.extras["lifecycle"]`) is told, so it places
the session and sends what was queued without waiting for its next sweep.
"""

from __future__ import annotations

from streamspace.api import shapes
from streamspace.api.body import AGENT_ID as AGENT_ID_PATTERN
from streamspace.api.body import (
    AGENT_ID_HELP,
    PLATFORM,
    PLATFORM_HELP,
    REGION,
    REGION_HELP,
    SLUG,
    SLUG_HELP,
    USERNAME,
    USERNAME_HELP,
    Field,
    is_uuid,
    query_bool,
    query_choice,
    query_matching,
    read_json,
    validate,
)
from streamspace.api.errors import ApiError, forbidden, not_found
from streamspace.db import sessions
from streamspace.sessions import requests, states
from streamspace.sessions.moves import Actor

CREATE_FIELDS = {
    "template": Field("string", required=True, pattern=SLUG, pattern_help=SLUG_HELP),
    "name": Field("string", max_len=128),
    "state": Field("string", choices=("running",)),
    "platform": Field("string", nullable=True, pattern=PLATFORM, pattern_help=PLATFORM_HELP),
    "region": Field("string", nullable=True, pattern=REGION, pattern_help=REGION_HELP),
    # The seed's body names the owner; honoured for admins, must be the caller otherwise.
    "user": Field("string", pattern=USERNAME, pattern_help=USERNAME_HELP),
}
UPDATE_FIELDS = {
    "state": Field("string", required=True, choices=tuple(sorted(states.USER_REQUESTS))),
}
# domain refusal -> HTTP status
REFUSALS = {"not_found": 404, "unknown_user": 400, "unknown_template": 400,
            "unsupported_platform": 400}


def _refused(e: requests.Refused) -> ApiError:
    return ApiError(REFUSALS.get(e.code, 409), e.code, e.message)


def _session_id(session_id: str) -> str:
    if not is_uuid(session_id):
        raise not_found("no such session")
    return session_id.lower()


def _owner_scope(principal) -> str | None:
    """Admins see every session; everyone else only their own (others' are 404)."""
    return None if principal.is_admin else principal.user_id


def _actor(api, request, principal) -> Actor:
    return Actor(principal.user_id, principal.username, api.client_addr(request),
                 principal.is_admin)


async def _current(api, session_id: str) -> dict:
    row = await sessions.get(api.ctx.db, session_id)
    if row is None:  # deleted meanwhile (its owner was removed)
        raise not_found("no such session")
    return shapes.session(row)


async def list_sessions(api, request):
    principal = await api.principal(request)
    state = query_choice(request, "state", states.ALL_STATES)
    include_terminated = query_bool(request, "include_terminated")
    hide_terminated = state is None and not include_terminated
    rows = await sessions.list_sessions(
        api.ctx.db, owner_id=_owner_scope(principal),
        username=query_matching(request, "user", USERNAME, USERNAME_HELP),
        state=state,
        exclude_states=(states.TERMINATED,) if hide_terminated else (),
        agent_id=query_matching(request, "agent_id", AGENT_ID_PATTERN, AGENT_ID_HELP),
        platform=query_matching(request, "platform", PLATFORM, PLATFORM_HELP))
    return api.ok(request, [shapes.session(r) for r in rows])


async def get_session(api, request, session_id):
    principal = await api.principal(request)
    row = await sessions.get(api.ctx.db, _session_id(session_id),
                             owner_id=_owner_scope(principal))
    if row is None:
        raise not_found("no such session")
    return api.ok(request, shapes.session(row))


async def create_session(api, request):
    principal = await api.principal(request)
    body = validate(read_json(request), CREATE_FIELDS)
    owner_name = body.get("user", principal.username)
    if owner_name != principal.username and not principal.is_admin:
        raise forbidden("only admins may create sessions for other users")
    new = requests.NewSession(template=body["template"], owner=owner_name,
                              name=body.get("name"), platform=body.get("platform"),
                              region=body.get("region"))
    try:
        session_id = await requests.create(api.ctx.db, _actor(api, request, principal), new,
                                           api.ctx.default_max_sessions)
    except requests.Refused as e:
        raise _refused(e) from None
    await api.notify_lifecycle("session_changed", session_id)
    request.setHeader(b"Location", f"/api/v1/sessions/{session_id}".encode())
    return api.ok(request, await _current(api, session_id), 201)


async def update_session(api, request, session_id):
    """{state: hibernated} hibernates a running session; {state: running} wakes a
    hibernated one or restarts a stopped or failed one (same template, same agent)."""
    principal = await api.principal(request)
    session_id = _session_id(session_id)
    requested = validate(read_json(request), UPDATE_FIELDS)["state"]
    try:
        target = await requests.change_state(
            api.ctx.db, _actor(api, request, principal), session_id, requested,
            owner_id=_owner_scope(principal), default_limit=api.ctx.default_max_sessions,
            command_timeout=api.ctx.command_timeout)
    except requests.Refused as e:
        raise _refused(e) from None
    if target is not None:
        await api.notify_lifecycle("session_changed", session_id)
    return api.ok(request, await _current(api, session_id))


async def delete_session(api, request, session_id):
    principal = await api.principal(request)
    session_id = _session_id(session_id)
    try:
        before, target = await requests.delete(
            api.ctx.db, _actor(api, request, principal), session_id,
            owner_id=_owner_scope(principal), command_timeout=api.ctx.command_timeout)
    except requests.Refused as e:
        raise _refused(e) from None
    if target is not None:
        await api.notify("vnc_proxy", "end_for_session", session_id, "the session was deleted")
        await api.notify_lifecycle("session_changed", session_id)
    if before == states.TERMINATED:
        return api.no_content(request)
    return api.ok(request, await _current(api, session_id), 202)
