"""/sessions: create, list, read, hibernate/wake and delete sessions.

This layer writes rows and validates transitions; the session lifecycle (wired in
`ctx.extras["lifecycle"]`) makes them happen on an agent once the change is committed.
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
from streamspace.api.errors import bad_request, conflict, forbidden, not_found
from streamspace.db import sessions, templates, users
from streamspace.sessions import states

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


def _session_id(session_id: str) -> str:
    if not is_uuid(session_id):
        raise not_found("no such session")
    return session_id.lower()


def _owner_scope(principal) -> str | None:
    """Admins see every session; everyone else only their own (others' are 404)."""
    return None if principal.is_admin else principal.user_id


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
    platform, region = body.get("platform"), body.get("region")

    async def work(cursor):
        if owner_name == principal.username:
            owner = await users.lock(cursor, principal.user_id)
        else:
            found = await users.get_by_username(cursor, owner_name)
            owner = await users.lock(cursor, found["id"]) if found else None
        if owner is None or owner["disabled"]:
            raise bad_request(f"no active user named `{owner_name}`", "unknown_user")
        # The owner's row is locked until commit, so concurrent creates for one user
        # count one after another: the limit holds however many requests race.
        limit = owner["max_sessions"]
        if limit is None:
            limit = api.ctx.default_max_sessions
        active = await sessions.count_by_states(cursor, owner["id"], states.ACTIVE_STATES)
        if active >= limit:
            who = "you have" if owner["id"] == principal.user_id else f"{owner_name} has"
            raise conflict("session_limit_reached",
                           f"{who} {active} active session(s) and the limit is {limit}; "
                           "delete or hibernate a session first")
        template = await templates.get_enabled(cursor, body["template"])
        if template is None:
            raise bad_request(f"no enabled template named `{body['template']}`",
                              "unknown_template")
        offered = template["platforms"] or {}
        if platform is not None and offered and platform not in offered:
            raise bad_request(
                f"template `{template['name']}` does not run on `{platform}` "
                f"(it runs on: {', '.join(sorted(offered))})", "unsupported_platform")
        session_id = await sessions.insert(
            cursor, user_id=owner["id"], template_id=template["id"],
            template_name=template["name"], name=body.get("name") or template["name"],
            state=states.PENDING, requested_platform=platform, requested_region=region)
        await sessions.add_event(cursor, session_id, states.PENDING, "session requested")
        await api.audit(cursor, request, principal, "session.create", "session", session_id,
                        details={"template": template["name"], "owner": owner_name})
        return session_id

    session_id = await api.ctx.db.transaction(work)
    await api.notify_lifecycle("session_created", session_id)
    request.setHeader(b"Location", f"/api/v1/sessions/{session_id}".encode())
    return api.ok(request, await _current(api, session_id), 201)


async def update_session(api, request, session_id):
    principal = await api.principal(request)
    session_id = _session_id(session_id)
    requested = validate(read_json(request), UPDATE_FIELDS)["state"]

    async def work(cursor):
        row = await sessions.lock(cursor, session_id, owner_id=_owner_scope(principal))
        if row is None:
            raise not_found("no such session")
        current = row["state"]
        # Asking again for what is already happening (or done) changes nothing.
        if current == requested or current in states.USER_REQUESTS[requested].values():
            return None
        try:
            target = states.requested_transition(current, requested)
        except states.InvalidTransition as e:
            raise conflict("invalid_state_transition", str(e)) from None
        await sessions.set_state(cursor, session_id, target)
        await sessions.add_event(cursor, session_id, target, f"{requested} requested")
        await api.audit(cursor, request, principal, "session.state_change", "session",
                        session_id, details={"from": current, "to": target,
                                             "requested": requested})
        return target

    target = await api.ctx.db.transaction(work)
    if target is not None:
        await api.notify_lifecycle("state_requested", session_id, target)
    return api.ok(request, await _current(api, session_id))


async def delete_session(api, request, session_id):
    principal = await api.principal(request)
    session_id = _session_id(session_id)

    async def work(cursor):
        row = await sessions.lock(cursor, session_id, owner_id=_owner_scope(principal))
        if row is None:
            raise not_found("no such session")
        current = row["state"]
        if current in (states.TERMINATED, states.TERMINATING):
            return current, None
        # A session that never reached an agent has nothing to stop: it ends at once.
        if row["agent_uuid"] is None and states.can_move(current, states.TERMINATED):
            target = states.TERMINATED
        else:
            try:
                states.check_move(current, states.TERMINATING)
            except states.InvalidTransition as e:
                raise conflict("invalid_state_transition", str(e)) from None
            target = states.TERMINATING
        await sessions.set_state(cursor, session_id, target)
        await sessions.add_event(cursor, session_id, target, "deletion requested")
        await api.audit(cursor, request, principal, "session.delete", "session", session_id,
                        details={"from": current, "to": target})
        return current, target

    before, target = await api.ctx.db.transaction(work)
    if target is not None:
        await api.notify("vnc_proxy", "end_for_session", session_id, "the session was deleted")
        await api.notify_lifecycle("state_requested", session_id, target)
    if before == states.TERMINATED:
        return api.no_content(request)
    return api.ok(request, await _current(api, session_id), 202)

