"""SQL for the agent fleet: presence, the command queue, placement counts, the VNC lookup.

No state machine here (streamspace.sessions applies it); functions take the states they
count or filter on as arguments. Everything that must be atomic takes a cursor (the caller
owns the transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from streamspace.db.pool import Database, fetch_all, fetch_one

IN_FLIGHT = ("pending", "sent", "ack")


def _j(value: Any) -> str:
    return json.dumps(value, default=str)


# -- presence -----------------------------------------------------------------------------

async def mark_online(db: Database, agent_uuid: str, conn_id: str, *, platform: str,
                      region: str, capacity: dict, metadata: dict,
                      protocol_version: int) -> None:
    await db.execute(
        "UPDATE agents SET status = 'online', websocket_conn_id = %s, last_heartbeat = now(), "
        "platform = %s, region = %s, capacity = %s, metadata = %s, protocol_version = %s, "
        "updated_at = now() WHERE id = %s",
        (conn_id, platform, region, _j(capacity), _j(metadata), protocol_version, agent_uuid))


async def record_heartbeat(db: Database, agent_uuid: str, conn_id: str, usage: dict) -> None:
    await db.execute(
        "UPDATE agents SET last_heartbeat = now(), updated_at = now(), "
        "metadata = jsonb_set(coalesce(metadata, '{}'::jsonb), '{usage}', %s::jsonb) "
        "WHERE id = %s AND websocket_conn_id = %s",
        (_j(usage), agent_uuid, conn_id))


async def set_offline(cursor, agent_uuid: str, conn_id: str | None) -> bool:
    """Offline, only if `conn_id` is still the live connection (None: whatever it is), so
    a stale close cannot knock out a newer one. True when the row changed."""
    if conn_id is None:
        row = await fetch_one(cursor, "UPDATE agents SET status = 'offline', "
                              "websocket_conn_id = NULL, updated_at = now() "
                              "WHERE id = %s RETURNING id", (agent_uuid,))
    else:
        row = await fetch_one(cursor, "UPDATE agents SET status = 'offline', "
                              "websocket_conn_id = NULL, updated_at = now() "
                              "WHERE id = %s AND websocket_conn_id = %s RETURNING id",
                              (agent_uuid, conn_id))
    return row is not None


async def online_agents(db: Database) -> list[str]:
    return [str(r[0]) for r in await db.query("SELECT id FROM agents WHERE status = 'online'")]


async def is_online(cursor, agent_uuid: str) -> bool:
    row = await fetch_one(cursor, "SELECT status FROM agents WHERE id = %s", (agent_uuid,))
    return row is not None and row[0] == "online"


# -- placement ----------------------------------------------------------------------------

async def candidate_agents(cursor, platform: str | None, region: str | None,
                           active_states: Iterable[str], *, only: str | None = None,
                           exclude_session: str | None = None) -> list[dict]:
    """Online agents matching the request (or just agent `only`), locked, with what they
    already carry (sessions in `active_states` but `exclude_session`, and their
    templates' resources).

    Locking and counting are two statements on purpose: under READ COMMITTED, a statement
    that waited for a row lock still sees its old snapshot in subqueries, so counts taken
    in the locking statement could miss sessions a concurrent scheduler just placed.
    """
    locked = await fetch_all(
        cursor,
        "SELECT id FROM agents WHERE status = 'online' "
        "AND (%s::text IS NULL OR platform = %s) AND (%s::text IS NULL OR region = %s) "
        "AND (%s::uuid IS NULL OR id = %s::uuid) ORDER BY agent_id FOR UPDATE",
        (platform, platform, region, region, only, only))
    if not locked:
        return []
    carried = ("s.agent_id = a.id AND s.state = ANY(%(active)s) "
               "AND s.id IS DISTINCT FROM %(exclude)s::uuid")
    rows = await fetch_all(
        cursor,
        "SELECT a.id, a.agent_id, a.platform, a.region, a.capacity, "
        f"  (SELECT count(*) FROM sessions s WHERE {carried}), "
        "  (SELECT coalesce(sum(t.cpu), 0) FROM sessions s JOIN templates t "
        f"     ON t.id = s.template_id WHERE {carried}), "
        "  (SELECT coalesce(sum(t.memory_mb), 0) FROM sessions s JOIN templates t "
        f"     ON t.id = s.template_id WHERE {carried}) "
        "FROM agents a WHERE a.id = ANY(%(ids)s::uuid[]) ORDER BY a.agent_id",
        {"active": list(active_states), "exclude": exclude_session,
         "ids": [str(r[0]) for r in locked]})
    return [{"id": str(r[0]), "agent_id": r[1], "platform": r[2], "region": r[3],
             "capacity": r[4], "sessions": int(r[5]), "cpu": float(r[6]),
             "memory_mb": int(r[7])} for r in rows]


async def agent_name(cursor, agent_uuid: str) -> str | None:
    row = await fetch_one(cursor, "SELECT agent_id FROM agents WHERE id = %s", (agent_uuid,))
    return row[0] if row else None


# -- command queue ------------------------------------------------------------------------

async def enqueue(cursor, agent_uuid: str, session_id: str | None, command_type: str,
                  data: dict, timeout: float) -> dict:
    """Queue a command; returns it as the hub sends it (deadline from the database clock,
    the same one the timeout sweep compares against)."""
    row = await fetch_one(
        cursor,
        "INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, deadline) "
        "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING id, deadline",
        (agent_uuid, session_id, command_type, _j(data), timeout))
    return {"id": str(row[0]), "agent_id": agent_uuid, "command_type": command_type,
            "session_id": session_id, "data": data, "deadline": row[1].isoformat()}


def _command(r: tuple) -> dict:
    return {"id": str(r[0]), "agent_id": str(r[1]), "command_type": r[2],
            "session_id": str(r[3]) if r[3] else None, "data": r[4] or {},
            "deadline": r[5].isoformat()}


_COMMAND = "SELECT id, agent_id, command_type, session_id, command_data, deadline " \
           "FROM agent_commands "


async def in_flight_for_agent(db: Database, agent_uuid: str) -> list[dict]:
    rows = await db.query(_COMMAND + "WHERE agent_id = %s AND status = ANY(%s) "
                          "ORDER BY created_at, id", (agent_uuid, list(IN_FLIGHT)))
    return [_command(r) for r in rows]


async def undelivered(db: Database, *, session_id: str | None = None,
                      older_than: float = 0.0, limit: int = 500) -> list[dict]:
    """Commands still `pending` (never sent): for one session, or all older than
    `older_than` seconds (what a lost post-commit delivery left behind)."""
    if session_id is not None:
        rows = await db.query(_COMMAND + "WHERE session_id = %s AND status = 'pending' "
                              "ORDER BY created_at, id", (session_id,))
    else:
        rows = await db.query(
            _COMMAND + "WHERE status = 'pending' AND deadline > now() "
            "AND created_at < now() - make_interval(secs => %s) "
            "ORDER BY created_at, id LIMIT %s", (older_than, limit))
    return [_command(r) for r in rows]


async def claim(db: Database, command_id: str) -> bool:
    """`pending -> sent`; True for the one caller that flipped it (it sends it)."""
    rows = await db.query(
        "UPDATE agent_commands SET status = 'sent', sent_at = now() "
        "WHERE id = %s AND status = 'pending' RETURNING id", (command_id,))
    return bool(rows)


async def mark_sent(db: Database, command_id: str) -> None:
    await db.execute(
        "UPDATE agent_commands SET status = 'sent', sent_at = now() "
        "WHERE id = %s AND status = 'pending'", (command_id,))


async def session_of(cursor, command_id: str) -> str | None:
    """The session a command acts on (read before locking the session, so every writer
    locks a session before its commands)."""
    row = await fetch_one(cursor, "SELECT session_id FROM agent_commands WHERE id = %s",
                          (command_id,))
    return str(row[0]) if row and row[0] else None


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


async def overdue(db: Database, limit: int = 500) -> list[str]:
    """In-flight commands past their deadline."""
    rows = await db.query("SELECT id FROM agent_commands WHERE status = ANY(%s) "
                          "AND deadline < now() ORDER BY deadline LIMIT %s",
                          (list(IN_FLIGHT), limit))
    return [str(r[0]) for r in rows]


async def expire(cursor, command_id: str) -> dict | None:
    """Time one command out if it is still in flight and overdue (None otherwise)."""
    row = await fetch_one(
        cursor,
        "UPDATE agent_commands SET status = 'timeout', completed_at = now(), "
        "error = 'not completed by its deadline' "
        "WHERE id = %s AND status = ANY(%s) AND deadline < now() "
        "RETURNING id, command_type, session_id", (command_id, list(IN_FLIGHT)))
    if row is None:
        return None
    return {"id": str(row[0]), "command_type": row[1],
            "session_id": str(row[2]) if row[2] else None}


async def cancel_for_session(cursor, session_id: str) -> None:
    await cursor.execute(
        "UPDATE agent_commands SET status = 'cancelled', completed_at = now() "
        "WHERE session_id = %s AND status = ANY(%s)", (session_id, list(IN_FLIGHT)))


async def stops_in_flight(cursor, agent_uuid: str) -> set[str]:
    """Session ids (by `data.session_id`) that an in-flight stop already targets."""
    rows = await fetch_all(
        cursor, "SELECT command_data ->> 'session_id' FROM agent_commands "
                "WHERE agent_id = %s AND command_type = 'stop_session' AND status = ANY(%s) "
                "AND session_id IS NULL", (agent_uuid, list(IN_FLIGHT)))
    return {r[0] for r in rows if r[0]}


# -- VNC ----------------------------------------------------------------------------------

