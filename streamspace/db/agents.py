"""Agent rows: registration records, tokens (hashed) and what the admin API shows."""

from __future__ import annotations

from psycopg2.extras import Json

from streamspace.db.pool import Database, fetch_one

AGENT_COLUMNS = ("id", "agent_id", "platform", "region", "status", "capacity", "metadata",
                 "protocol_version", "last_heartbeat", "created_at", "updated_at",
                 "active_sessions")


def _select(active_states) -> tuple[str, list]:
    sql = ("SELECT a.id, a.agent_id, a.platform, a.region, a.status, a.capacity, a.metadata, "
           "a.protocol_version, a.last_heartbeat, a.created_at, a.updated_at, "
           "(SELECT count(*) FROM sessions s WHERE s.agent_id = a.id "
           "AND s.state = ANY(%s)) FROM agents a")
    return sql, [list(active_states)]


def _agent(row: tuple | None) -> dict | None:
    return dict(zip(AGENT_COLUMNS, row, strict=True)) if row is not None else None


async def get_by_agent_id(db: Database, agent_id: str) -> dict | None:
    """The agent record including `token_hash` (for authenticating the agent)."""
    rows = await db.query(
        "SELECT id, agent_id, platform, region, status, capacity, metadata, protocol_version, "
        "last_heartbeat, created_at, updated_at, token_hash FROM agents WHERE agent_id = %s",
        (agent_id,))
    if not rows:
        return None
    row = rows[0]
    agent = dict(zip(AGENT_COLUMNS[:-1], row[:-1], strict=True))
    agent["token_hash"] = row[-1]
    return agent


async def get(db: Database, agent_id: str, *, active_states) -> dict | None:
    sql, params = _select(active_states)
    rows = await db.query(sql + " WHERE a.agent_id = %s", tuple(params + [agent_id]))
    return _agent(rows[0]) if rows else None


async def fetch(cursor, agent_id: str, *, active_states) -> dict | None:
    sql, params = _select(active_states)
    return _agent(await fetch_one(cursor, sql + " WHERE a.agent_id = %s",
                                  tuple(params + [agent_id])))


async def list_agents(db: Database, *, active_states, platform: str | None = None,
                      status: str | None = None, region: str | None = None) -> list[dict]:
    sql, params = _select(active_states)
    where = []
    for column, value in (("a.platform", platform), ("a.status", status),
                          ("a.region", region)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY a.agent_id"
    return [_agent(r) for r in await db.query(sql, tuple(params))]


async def create(cursor, *, agent_id: str, platform: str, region: str, capacity: dict,
                 metadata: dict, token_hash: str) -> str | None:
    """Insert an agent; its uuid, or None when the agent id is taken."""
    row = await fetch_one(
        cursor,
        "INSERT INTO agents (agent_id, platform, region, capacity, metadata, token_hash) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (agent_id) DO NOTHING RETURNING id",
        (agent_id, platform, region, Json(capacity), Json(metadata), token_hash))
    return row[0] if row else None


async def lock(cursor, agent_id: str) -> dict | None:
    row = await fetch_one(cursor, "SELECT id, token_hash FROM agents WHERE agent_id = %s "
                                  "FOR UPDATE", (agent_id,))
    return {"id": row[0], "token_hash": row[1]} if row else None


async def set_token_hash(cursor, agent_uuid: str, token_hash: str) -> None:
    await cursor.execute("UPDATE agents SET token_hash = %s, updated_at = now() WHERE id = %s",
                         (token_hash, agent_uuid))


async def update_registration(cursor, agent_uuid: str, *, platform: str | None,
                              region: str | None, capacity: dict | None,
                              metadata: dict | None, protocol_version: int | None) -> None:
    """Record what an agent reports about itself (fields left None keep their value)."""
    await cursor.execute(
        "UPDATE agents SET platform = COALESCE(%s, platform), region = COALESCE(%s, region), "
        "capacity = COALESCE(%s, capacity), metadata = COALESCE(%s, metadata), "
        "protocol_version = COALESCE(%s, protocol_version), updated_at = now() WHERE id = %s",
        (platform, region, Json(capacity) if capacity is not None else None,
         Json(metadata) if metadata is not None else None, protocol_version, agent_uuid))


async def delete(cursor, agent_uuid: str) -> None:
    await cursor.execute("DELETE FROM agents WHERE id = %s", (agent_uuid,))
