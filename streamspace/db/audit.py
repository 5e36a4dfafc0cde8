"""The audit log: written inside the transaction of the change it records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from streamspace.db.pool import Database, fetch_one

AUDIT_COLUMNS = ("id", "created_at", "actor_id", "actor_name", "action", "target_type",
                 "target_id", "client_addr", "success", "details")


async def record(cursor, *, actor_id: str | None, actor_name: str, action: str,
                 target_type: str, target_id: str | None, client_addr: str | None,
                 success: bool = True, details: dict[str, Any] | None = None) -> int:
    row = await fetch_one(
        cursor,
        "INSERT INTO audit_log (actor_id, actor_name, action, target_type, target_id, "
        "client_addr, success, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (actor_id, (actor_name or "")[:64], action[:64], (target_type or "")[:32],
         (target_id or "")[:255], (client_addr or "")[:64], success, Json(details or {})))
    return row[0]


async def search(db: Database, *, action: str | None = None, action_prefix: str | None = None,
                 actor: str | None = None, actor_id: str | None = None,
                 target_type: str | None = None, target_id: str | None = None,
                 success: bool | None = None, since: datetime | None = None,
                 until: datetime | None = None, before_id: int | None = None,
                 offset: int = 0, limit: int = 100) -> list[dict]:
    """Newest first. Page with `before_id` (keyset: the last id of the previous page)
    or `offset`."""
    where, params = [], []
    for column, value in (("action", action), ("actor_name", actor), ("actor_id", actor_id),
                          ("target_type", target_type), ("target_id", target_id),
                          ("success", success)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if action_prefix is not None:
        escaped = action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("action LIKE %s")
        params.append(escaped + "%")
    if since is not None:
        where.append("created_at >= %s")
        params.append(since)
    if until is not None:
        where.append("created_at < %s")
        params.append(until)
    if before_id is not None:
        where.append("id < %s")
        params.append(before_id)
    sql = ("SELECT " + ", ".join(AUDIT_COLUMNS) + " FROM audit_log"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY id DESC LIMIT %s OFFSET %s")
    params.extend([limit, offset])
    rows = await db.query(sql, tuple(params))
    return [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows]
