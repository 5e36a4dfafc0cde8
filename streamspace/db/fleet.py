"""SQL for the agent fleet: presence, the command queue, scheduling and session moves.

Everything that must be atomic takes a cursor (the caller owns the transaction)."""

from __future__ import annotations

import json
from typing import Any

from streamspace.db.pool import Database, fetch_all, fetch_one
from streamspace.sessions import states

IN_FLIGHT = ("pending", "sent", "ack")
# sessions that depend on a live agent connection
AGENT_BOUND = (states.SCHEDULED, states.STARTING, states.RUNNING, states.HIBERNATING,
               states.WAKING)


def _j(value: Any) -> str:
    return json.dumps(value, default=str)


# -- presence -----------------------------------------------------------------------------

async def mark_online(db: Database, agent_uuid: str, conn_id: str, register: dict) -> None:
    capacity = register.get("capacity") or {}
    metadata = register.get("metadata") or {}
    await db.execute(
        "UPDATE agents SET status = 'online', websocket_conn_id = %s, last_heartbeat = now(), "
        "platform = %s, region = %s, capacity = %s, metadata = %s, protocol_version = %s, "
        "updated_at = now() WHERE id = %s",
        (conn_id, str(register.get("platform")), str(register.get("region") or ""),
         _j(capacity), _j(metadata), int(register.get("protocol_version") or 0), agent_uuid))


async def record_heartbeat(db: Database, agent_uuid: str, conn_id: str, usage: dict) -> None:
    await db.execute(
        "UPDATE agents SET last_heartbeat = now(), updated_at = now(), "
        "metadata = jsonb_set(coalesce(metadata, '{}'::jsonb), '{usage}', %s::jsonb) "
        "WHERE id = %s AND websocket_conn_id = %s",
        (_j(usage), agent_uuid, conn_id))


async def mark_offline(db: Database, agent_uuid: str, conn_id: str | None, reason: str
                       ) -> list[str]:
    """Offline (only if `conn_id` is still the live connection, so a stale close cannot
    knock out a newer one); its agent-bound sessions become `unreachable`."""

    async def work(cursor) -> list[str]:
        if conn_id is None:
            row = await fetch_one(cursor, "UPDATE agents SET status = 'offline', "
                                  "websocket_conn_id = NULL, updated_at = now() "
                                  "WHERE id = %s RETURNING id", (agent_uuid,))
        else:
            row = await fetch_one(cursor, "UPDATE agents SET status = 'offline', "
                                  "websocket_conn_id = NULL, updated_at = now() "
                                  "WHERE id = %s AND websocket_conn_id = %s RETURNING id",
                                  (agent_uuid, conn_id))
        if row is None:
            return []
        rows = await fetch_all(
            cursor, "SELECT id FROM sessions WHERE agent_id = %s AND state = ANY(%s) FOR UPDATE",
            (agent_uuid, list(AGENT_BOUND)))
        ids = [str(r[0]) for r in rows]
        for sid in ids:
            await move_session(cursor, sid, states.UNREACHABLE,
                               message=f"agent went offline: {reason}")
        return ids

    return await db.transaction(work)


async def all_offline(db: Database) -> None:
    """At start-up no connection is live, whatever the table says."""
    for (agent_uuid,) in await db.query("SELECT id FROM agents WHERE status = 'online'"):
        await mark_offline(db, str(agent_uuid), None, "control plane restarted")


async def silent_agents(db: Database, timeout: float) -> list[tuple[str, str]]:
    rows = await db.query(
        "SELECT id, websocket_conn_id FROM agents WHERE status = 'online' "
        "AND last_heartbeat < now() - make_interval(secs => %s)", (timeout,))
    return [(str(r[0]), r[1]) for r in rows]


# -- sessions -----------------------------------------------------------------------------

async def move_session(cursor, session_id: str, target: str, *, message: str = "",
                       error: str | None = None, metadata: dict | None = None) -> bool:
    """Move a session if the state machine allows it from its current state; records the
    progress event in the same transaction. False (and nothing written) otherwise."""
    row = await fetch_one(cursor, "SELECT state FROM sessions WHERE id = %s FOR UPDATE",
                          (session_id,))
    if row is None or not states.can_move(row[0], target):
        return False
    sets = ["state = %s", "state_changed_at = now()", "updated_at = now()"]
    params: list[Any] = [target]
    if target == states.FAILED:
        sets.append("error = %s")
        params.append(error or message or "failed")
    elif target in (states.RUNNING, states.SCHEDULED):
        sets.append("error = NULL")
    if metadata is not None:
        sets.append("platform_metadata = platform_metadata || %s::jsonb")
        params.append(_j(metadata))
    await cursor.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = %s",
                         (*params, session_id))
    await cursor.execute(
        "INSERT INTO session_events (session_id, state, message) VALUES (%s, %s, %s)",
        (session_id, target, error if target == states.FAILED and error else message))
    return True


async def add_progress_event(db: Database, session_id: str, agent_uuid: str,
                             message: str) -> bool:
    """A progress event in the session's current state, if the session is on that agent
    and still alive; False otherwise (nothing written)."""
    rows = await db.query(
        "INSERT INTO session_events (session_id, state, message) "
        "SELECT id, state, %s FROM sessions WHERE id = %s AND agent_id = %s "
        "AND state <> 'terminated' RETURNING id", (message, session_id, agent_uuid))
    return bool(rows)


async def session_for_command(cursor, session_id: str) -> dict | None:
    row = await fetch_one(
        cursor,
        "SELECT s.id, s.state, s.agent_id, s.name, s.user_id, u.username, s.template_name, "
        "t.name, t.vnc_port, t.cpu, t.memory_mb, t.env, t.persistent_home, t.platforms, "
        "s.requested_platform, s.requested_region "
        "FROM sessions s JOIN users u ON u.id = s.user_id "
        "LEFT JOIN templates t ON t.id = s.template_id WHERE s.id = %s FOR UPDATE OF s",
        (session_id,))
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
        "requested_platform": row[14], "requested_region": row[15],
    }


async def candidate_agents(cursor, platform: str | None, region: str | None) -> list[dict]:
    """Online agents matching the request, locked, with what they already carry.

    Locking and counting are two statements on purpose: under READ COMMITTED, a statement
    that waited for a row lock still sees its old snapshot in subqueries, so counts taken
    in the locking statement could miss sessions a concurrent scheduler just placed.
    """
    locked = await fetch_all(
        cursor,
        "SELECT id FROM agents WHERE status = 'online' "
        "AND (%s::text IS NULL OR platform = %s) AND (%s::text IS NULL OR region = %s) "
        "ORDER BY agent_id FOR UPDATE", (platform, platform, region, region))
    if not locked:
        return []
    rows = await fetch_all(
        cursor,
        "SELECT a.id, a.agent_id, a.platform, a.region, a.capacity, "
        "  (SELECT count(*) FROM sessions s WHERE s.agent_id = a.id AND s.state = ANY(%s)), "
        "  (SELECT coalesce(sum(t.cpu), 0) FROM sessions s JOIN templates t "
        "     ON t.id = s.template_id WHERE s.agent_id = a.id AND s.state = ANY(%s)), "
        "  (SELECT coalesce(sum(t.memory_mb), 0) FROM sessions s JOIN templates t "
        "     ON t.id = s.template_id WHERE s.agent_id = a.id AND s.state = ANY(%s)) "
        "FROM agents a WHERE a.id = ANY(%s::uuid[]) ORDER BY a.agent_id",
        (list(states.ACTIVE_STATES),) * 3 + ([str(r[0]) for r in locked],))
    return [{"id": str(r[0]), "agent_id": r[1], "platform": r[2], "region": r[3],
             "capacity": r[4] or {}, "sessions": int(r[5]), "cpu": float(r[6]),
             "memory_mb": int(r[7])} for r in rows]


async def assign_session(cursor, session_id: str, agent: dict) -> None:
    await cursor.execute(
        "UPDATE sessions SET agent_id = %s, platform = %s, region = %s, updated_at = now() "
        "WHERE id = %s", (agent["id"], agent["platform"], agent["region"], session_id))


async def sessions_of_agent(db: Database, agent_uuid: str) -> list[tuple[str, str]]:
    rows = await db.query(
        "SELECT id, state FROM sessions WHERE agent_id = %s AND state <> 'terminated'",
        (agent_uuid,))
    return [(str(r[0]), r[1]) for r in rows]


async def unscheduled_sessions(db: Database, older_than: float) -> list[str]:
    """Sessions still `pending` a while after creation: their scheduling was lost (e.g. the
    control plane stopped between the API's commit and the scheduler's turn)."""
    rows = await db.query(
        "SELECT id FROM sessions WHERE state = 'pending' AND agent_id IS NULL "
        "AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT 100",
        (older_than,))
    return [str(r[0]) for r in rows]


async def stuck_sessions(db: Database, timeouts: dict[str, float]) -> list[tuple[str, str]]:
    found = []
    for state, seconds in timeouts.items():
        rows = await db.query(
            "SELECT id FROM sessions WHERE state = %s "
            "AND state_changed_at < now() - make_interval(secs => %s)", (state, seconds))
        found += [(str(r[0]), state) for r in rows]
    return found


# -- command queue ------------------------------------------------------------------------

async def enqueue(cursor, agent_uuid: str, session_id: str | None, command_type: str,
                  data: dict, timeout: float) -> str:
    row = await fetch_one(
        cursor,
        "INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, deadline) "
        "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING id",
        (agent_uuid, session_id, command_type, _j(data), timeout))
    return str(row[0])


async def in_flight_for_agent(db: Database, agent_uuid: str) -> list[dict]:
    rows = await db.query(
        "SELECT id, command_type, session_id, command_data, deadline FROM agent_commands "
        "WHERE agent_id = %s AND status = ANY(%s) ORDER BY created_at, id",
        (agent_uuid, list(IN_FLIGHT)))
    return [{"id": str(r[0]), "command_type": r[1], "session_id": str(r[2]) if r[2] else None,
             "data": r[3] or {}, "deadline": r[4].isoformat()} for r in rows]


async def mark_sent(db: Database, command_id: str) -> None:
    await db.execute(
        "UPDATE agent_commands SET status = 'sent', sent_at = now() "
        "WHERE id = %s AND status = 'pending'", (command_id,))


async def mark_acked(cursor, command_id: str, agent_uuid: str) -> dict | None:
    row = await fetch_one(
        cursor,
        "UPDATE agent_commands SET status = 'ack', acked_at = now() "
        "WHERE id = %s AND agent_id = %s AND status IN ('pending', 'sent') "
        "RETURNING command_type, session_id", (command_id, agent_uuid))
    return {"command_type": row[0], "session_id": str(row[1]) if row[1] else None} if row else None


async def finish(cursor, command_id: str, agent_uuid: str, status: str,
                 result: dict | None, error: str | None) -> dict | None:
    """Close an in-flight command; None when it was not in flight (late or duplicate)."""
    row = await fetch_one(
        cursor,
        "UPDATE agent_commands SET status = %s, result = %s, error = %s, completed_at = now() "
        "WHERE id = %s AND agent_id = %s AND status = ANY(%s) "
        "RETURNING command_type, session_id, command_data",
        (status, _j(result) if result is not None else None, error, command_id, agent_uuid,
         list(IN_FLIGHT)))
    if row is None:
        return None
    return {"command_type": row[0], "session_id": str(row[1]) if row[1] else None,
            "data": row[2] or {}}


async def expire(cursor) -> list[dict]:
    rows = await fetch_all(
        cursor,
        "UPDATE agent_commands SET status = 'timeout', completed_at = now(), "
        "error = 'not completed by its deadline' "
        "WHERE status = ANY(%s) AND deadline < now() "
        "RETURNING id, command_type, session_id", (list(IN_FLIGHT),))
    return [{"id": str(r[0]), "command_type": r[1], "session_id": str(r[2]) if r[2] else None}
            for r in rows]


async def cancel_for_session(cursor, session_id: str, except_id: str | None = None) -> None:
    await cursor.execute(
        "UPDATE agent_commands SET status = 'cancelled', completed_at = now() "
        "WHERE session_id = %s AND status = ANY(%s) AND id IS DISTINCT FROM %s::uuid",
        (session_id, list(IN_FLIGHT), except_id))


# -- VNC ----------------------------------------------------------------------------------

async def idle_sessions(db: Database, default_timeout: float) -> list[str]:
    """Running sessions idle past their template's idle timeout (else the default; 0 = never)."""
    rows = await db.query(
        "SELECT s.id FROM sessions s LEFT JOIN templates t ON t.id = s.template_id "
        "WHERE s.state = 'running' AND coalesce(t.idle_timeout_seconds, %s) > 0 "
        "AND s.last_activity < now() - make_interval(secs => coalesce(t.idle_timeout_seconds, %s))",
        (default_timeout, default_timeout))
    return [str(r[0]) for r in rows]
