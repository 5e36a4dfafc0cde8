"""Session rows and their progress events: the SQL, nothing else.

Which moves are allowed is the domain's business (streamspace.sessions.states); functions
here take the states they filter on as arguments. Everything that must be atomic takes a
cursor (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streamspace.db.fleet import IN_FLIGHT
from streamspace.db.pool import Database, fetch_all, fetch_one

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


# -- reading, as the API shows sessions ---------------------------------------------------

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


async def events(db: Database, session_id: str, after_id: int = 0) -> list[dict]:
    rows = await db.query("SELECT " + ", ".join(EVENT_COLUMNS) + " FROM session_events "
                          "WHERE session_id = %s AND id > %s ORDER BY id",
                          (session_id, after_id))
    return [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows]


async def state_of(db: Database, session_id: str) -> str | None:
    rows = await db.query("SELECT state FROM sessions WHERE id = %s", (session_id,))
    return rows[0][0] if rows else None


# -- writing: the domain's write path (streamspace.sessions.moves) calls these ----------

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
    return str(row[0])


async def lock_state(cursor, session_id: str, *, skip_locked: bool = False) -> dict | None:
    """The session's state and placement, locked for a move (None: no such session, or
    locked by someone else with `skip_locked`)."""
    row = await fetch_one(
        cursor,
        "SELECT id, state, agent_id, user_id, template_id, idle_failures FROM sessions "
        "WHERE id = %s FOR UPDATE" + (" SKIP LOCKED" if skip_locked else ""), (session_id,))
    if row is None:
        return None
    return {"id": str(row[0]), "state": row[1], "agent_id": str(row[2]) if row[2] else None,
            "user_id": str(row[3]), "template_id": str(row[4]) if row[4] else None,
            "idle_failures": int(row[5])}


async def write_state(cursor, session_id: str, state: str, *, error: str | None,
                      touch_activity: bool = False, idle_failures: int | None = None,
                      idle_retry_in: float | None = None) -> None:
    """Set the state (and `error`: NULL unless given); optionally restart the idle clock
    or record the idle-hibernation backoff."""
    sets = ["state = %s", "error = %s", "state_changed_at = now()", "updated_at = now()"]
    params: list[Any] = [state, error]
    if touch_activity:
        sets.append("last_activity = now()")
    if idle_failures is not None:
        sets.append("idle_failures = %s")
        params.append(idle_failures)
    if idle_retry_in is not None:
        sets.append("idle_retry_at = now() + make_interval(secs => %s)")
        params.append(idle_retry_in)
    elif idle_failures == 0:
        sets.append("idle_retry_at = NULL")
    await cursor.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = %s",
                         (*params, session_id))


async def add_event(cursor, session_id: str, state: str, message: str = "") -> None:
    await cursor.execute(
        "INSERT INTO session_events (session_id, state, message) VALUES (%s, %s, %s)",
        (session_id, state, message))


async def last_event_message(cursor, session_id: str) -> str | None:
    row = await fetch_one(cursor, "SELECT message FROM session_events WHERE session_id = %s "
                                  "ORDER BY id DESC LIMIT 1", (session_id,))
    return row[0] if row else None


async def add_event_if_alive(db: Database, session_id: str, agent_uuid: str, message: str,
                             final_states: Iterable[str]) -> bool:
    """A progress event in the session's current state, if the session is on that agent
    and not in a final state; False otherwise (nothing written)."""
    rows = await db.query(
        "INSERT INTO session_events (session_id, state, message) "
        "SELECT id, state, %s FROM sessions WHERE id = %s AND agent_id = %s "
        "AND NOT (state = ANY(%s)) RETURNING id",
        (message, session_id, agent_uuid, list(final_states)))
    return bool(rows)


async def assign(cursor, session_id: str, agent: dict) -> None:
    await cursor.execute(
        "UPDATE sessions SET agent_id = %s, platform = %s, region = %s, updated_at = now() "
        "WHERE id = %s", (agent["id"], agent["platform"], agent["region"], session_id))


async def for_command(cursor, session_id: str) -> dict | None:
    """What a start or wake command carries: the template, the owner, the name."""
    row = await fetch_one(
        cursor,
        "SELECT s.id, s.state, s.agent_id, s.name, s.user_id, u.username, s.template_name, "
        "t.name, t.vnc_port, t.cpu, t.memory_mb, t.env, t.persistent_home, t.platforms, "
        "s.requested_platform, s.requested_region, t.enabled "
        "FROM sessions s JOIN users u ON u.id = s.user_id "
        "LEFT JOIN templates t ON t.id = s.template_id WHERE s.id = %s", (session_id,))
    if row is None:
        return None
    return {
        "id": str(row[0]), "state": row[1], "agent_id": str(row[2]) if row[2] else None,
        "name": row[3], "user": {"id": str(row[4]), "username": row[5]},
        "template": {
            "name": row[7] or row[6], "vnc_port": row[8] or 5900,
            "cpu": float(row[9]) if row[9] is not None else 1.0,
            "memory_mb": row[10] or 1024, "env": row[11] or {},
            "persistent_home": bool(row[12]), "platforms": row[13] or {},
        },
        "template_exists": row[7] is not None, "template_enabled": bool(row[16]),
        "requested_platform": row[14], "requested_region": row[15],
    }


# -- counting ------------------------------------------------------------------------------

async def count_by_states(cursor, user_id: str, states) -> int:
    row = await fetch_one(cursor, "SELECT count(*) FROM sessions WHERE user_id = %s "
                                  "AND state = ANY(%s)", (user_id, list(states)))
    return int(row[0])


async def count_for_agent(cursor, agent_uuid: str, exclude_states) -> int:
    row = await fetch_one(cursor, "SELECT count(*) FROM sessions WHERE agent_id = %s "
                                  "AND NOT (state = ANY(%s))", (agent_uuid, list(exclude_states)))
    return int(row[0])


# -- what the sweeps and reconciliation look at -------------------------------------------

async def lock_agent_sessions(cursor, agent_uuid: str, states: Iterable[str], *,
                              skip_locked: bool = True) -> list[str]:
    """Lock the agent's sessions in `states`. With `skip_locked`, rows locked by others
    are left out: they are being moved right now, and the next report looks again."""
    rows = await fetch_all(
        cursor, "SELECT id FROM sessions WHERE agent_id = %s AND state = ANY(%s) "
                "ORDER BY id FOR UPDATE" + (" SKIP LOCKED" if skip_locked else ""),
        (agent_uuid, list(states)))
    return [str(r[0]) for r in rows]


async def ids_of_agent(cursor, agent_uuid: str, states: Iterable[str]) -> set[str]:
    rows = await fetch_all(cursor, "SELECT id FROM sessions WHERE agent_id = %s "
                                   "AND state = ANY(%s)", (agent_uuid, list(states)))
    return {str(r[0]) for r in rows}


async def states_with_commands(cursor, session_ids: list[str]) -> dict[str, tuple[str, bool]]:
    """session id -> (state, has a command in flight), read after locking (a fresh
    statement, so it sees commands committed while it waited)."""
    if not session_ids:
        return {}
    rows = await fetch_all(
        cursor,
        "SELECT s.id, s.state, EXISTS (SELECT 1 FROM agent_commands c WHERE "
        "c.session_id = s.id AND c.status = ANY(%s)) FROM sessions s "
        "WHERE s.id = ANY(%s::uuid[])", (list(IN_FLIGHT), session_ids))
    return {str(r[0]): (r[1], bool(r[2])) for r in rows}


async def ids_in_state(db: Database, states: Iterable[str], *, older_than: float = 0.0,
                       limit: int = 100) -> list[str]:
    rows = await db.query(
        "SELECT id FROM sessions WHERE state = ANY(%s) "
        "AND state_changed_at <= now() - make_interval(secs => %s) "
        "ORDER BY state_changed_at, id LIMIT %s", (list(states), older_than, limit))
    return [str(r[0]) for r in rows]


async def lock_if_in_state(cursor, session_id: str, state: str, older_than: float = 0.0
                           ) -> bool:
    """Lock the session only if it is still in `state` since at least `older_than`
    seconds: a sweep acts on what is true now, not on the snapshot it listed."""
    row = await fetch_one(
        cursor, "SELECT id FROM sessions WHERE id = %s AND state = %s "
                "AND state_changed_at <= now() - make_interval(secs => %s) "
                "FOR UPDATE SKIP LOCKED", (session_id, state, older_than))
    return row is not None


_IDLE = ("FROM sessions s LEFT JOIN templates t ON t.id = s.template_id "
         "WHERE s.state = %s AND coalesce(t.idle_timeout_seconds, %s) > 0 "
         "AND s.last_activity < now() - make_interval(secs => coalesce(t.idle_timeout_seconds, %s)) "
         "AND (s.idle_retry_at IS NULL OR s.idle_retry_at <= now())")


async def idle_ids(db: Database, running: str, default_timeout: float, limit: int = 100
                   ) -> list[str]:
    """Running sessions idle past their template's idle timeout (else the default; 0 =
    never), whose idle-hibernation backoff (after a failure) has passed."""
    rows = await db.query("SELECT s.id " + _IDLE + " ORDER BY s.last_activity LIMIT %s",
                          (running, default_timeout, default_timeout, limit))
    return [str(r[0]) for r in rows]


async def lock_if_idle(cursor, session_id: str, running: str, default_timeout: float
                       ) -> bool:
    row = await fetch_one(cursor, "SELECT s.id " + _IDLE + " AND s.id = %s "
                          "FOR UPDATE OF s SKIP LOCKED",
                          (running, default_timeout, default_timeout, session_id))
    return row is not None

