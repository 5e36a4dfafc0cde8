"""Session rows and their progress events, as the REST API reads and writes them."""

from __future__ import annotations

from streamspace.db.pool import Database, fetch_one

SESSION_COLUMNS = ("id", "name", "owner", "user_id", "template", "state", "error", "agent_id",
                   "platform", "region", "requested_platform", "requested_region",
                   "created_at", "updated_at", "last_activity", "state_changed_at",
                   "agent_uuid")
_SELECT = (
    "SELECT s.id, s.name, u.username, s.user_id, s.template_name, s.state, s.error, "
    "a.agent_id, s.platform, s.region, s.requested_platform, s.requested_region, "
    "s.created_at, s.updated_at, s.last_activity, s.state_changed_at, s.agent_id "
    "FROM sessions s JOIN users u ON u.id = s.user_id LEFT JOIN agents a ON a.id = s.agent_id")
EVENT_COLUMNS = ("id", "state", "message", "created_at")


def _session(row: tuple | None) -> dict | None:
    return dict(zip(SESSION_COLUMNS, row, strict=True)) if row is not None else None


def _scope(session_id: str, owner_id: str | None) -> tuple[str, tuple]:
    if owner_id is None:
        return " WHERE s.id = %s", (session_id,)
    return " WHERE s.id = %s AND s.user_id = %s", (session_id, owner_id)


async def get(db: Database, session_id: str, *, owner_id: str | None = None) -> dict | None:
    """The session; with `owner_id`, only if that user owns it."""
    where, params = _scope(session_id, owner_id)
    rows = await db.query(_SELECT + where, params)
    return _session(rows[0]) if rows else None


async def lock(cursor, session_id: str, *, owner_id: str | None = None) -> dict | None:
    where, params = _scope(session_id, owner_id)
    return _session(await fetch_one(cursor, _SELECT + where + " FOR UPDATE OF s", params))


async def fetch(cursor, session_id: str) -> dict | None:
    return _session(await fetch_one(cursor, _SELECT + " WHERE s.id = %s", (session_id,)))


async def list_sessions(db: Database, *, owner_id: str | None = None,
                        username: str | None = None, state: str | None = None,
                        exclude_states=(), agent_id: str | None = None,
                        platform: str | None = None) -> list[dict]:
    where, params = [], []
    for clause, value in (("s.user_id = %s", owner_id), ("u.username = %s", username),
                          ("s.state = %s", state), ("a.agent_id = %s", agent_id),
                          ("s.platform = %s", platform)):
        if value is not None:
            where.append(clause)
            params.append(value)
    if exclude_states:
        where.append("NOT (s.state = ANY(%s))")
        params.append(list(exclude_states))
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + \
        " ORDER BY s.created_at DESC, s.id"
    return [_session(r) for r in await db.query(sql, tuple(params))]


async def insert(cursor, *, user_id: str, template_id: str, template_name: str, name: str,
                 state: str, requested_platform: str | None,
                 requested_region: str | None) -> str:
    row = await fetch_one(
        cursor,
        "INSERT INTO sessions (user_id, template_id, template_name, name, state, "
        "requested_platform, requested_region) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "RETURNING id",
        (user_id, template_id, template_name, name, state, requested_platform,
         requested_region))
    return row[0]


async def set_state(cursor, session_id: str, state: str, *, error: str | None = None) -> None:
    await cursor.execute(
        "UPDATE sessions SET state = %s, error = COALESCE(%s, error), "
        "state_changed_at = now(), updated_at = now() WHERE id = %s",
        (state, error, session_id))


async def add_event(cursor, session_id: str, state: str, message: str = "") -> None:
    await cursor.execute(
        "INSERT INTO session_events (session_id, state, message) VALUES (%s, %s, %s)",
        (session_id, state, message))


async def events(db: Database, session_id: str) -> list[dict]:
    rows = await db.query("SELECT " + ", ".join(EVENT_COLUMNS) + " FROM session_events "
                          "WHERE session_id = %s ORDER BY id", (session_id,))
    return [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows]


async def count_by_states(cursor, user_id: str, states) -> int:
    row = await fetch_one(cursor, "SELECT count(*) FROM sessions WHERE user_id = %s "
                                  "AND state = ANY(%s)", (user_id, list(states)))
    return int(row[0])


async def count_for_agent(cursor, agent_uuid: str, exclude_states) -> int:
    row = await fetch_one(cursor, "SELECT count(*) FROM sessions WHERE agent_id = %s "
                                  "AND NOT (state = ANY(%s))", (agent_uuid, list(exclude_states)))
    return int(row[0])

