"""/audit: the audit log, newest first, filtered and paged (admin only)."""

from __future__ import annotations

from streamspace.api import shapes
from streamspace.api.body import (
    is_uuid,
    query,
    query_bool,
    query_int,
    query_matching,
    query_time,
)
from streamspace.api.errors import bad_request
from streamspace.db import audit

MAX_LIMIT = 500
ACTION = r"[a-z0-9_.]{1,64}\*?"
ACTION_HELP = "must be an action such as `session.create` (or a prefix ending in `*`)"
NAME = r"[A-Za-z0-9._:@-]{1,255}"
NAME_HELP = "has an invalid format"


async def list_audit(api, request):
    await api.admin(request)
    action = query_matching(request, "action", ACTION, ACTION_HELP)
    actor_id = query(request, "actor_id")
    if actor_id is not None and not is_uuid(actor_id):
        raise bad_request("query parameter `actor_id` must be a user id (UUID)")
    cursor = query_matching(request, "cursor", r"[0-9]{1,18}",
                            "must be a `next_cursor` value")
    limit = query_int(request, "limit", default=100, low=1, high=MAX_LIMIT)
    since, until = query_time(request, "since"), query_time(request, "until")
    rows = await audit.search(
        api.ctx.db,
        action=action if action and not action.endswith("*") else None,
        action_prefix=action[:-1] if action and action.endswith("*") else None,
        actor=query_matching(request, "actor", NAME, NAME_HELP),
        actor_id=actor_id,
        target_type=query_matching(request, "target_type", r"[a-z_]{1,32}", NAME_HELP),
        target_id=query_matching(request, "target_id", NAME, NAME_HELP),
        success=query_bool(request, "success"),
        since=since, until=until,
        before_id=int(cursor) if cursor is not None else None,
        offset=query_int(request, "offset", default=0, low=0, high=1_000_000),
        limit=limit)
    next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
    return api.ok(request, {"entries": [shapes.audit_entry(r) for r in rows],
                            "next_cursor": next_cursor})
