"""Template rows: the application catalog."""

from __future__ import annotations

from psycopg2.extras import Json

from streamspace.db.pool import Database, fetch_all, fetch_one

TEMPLATE_COLUMNS = ("id", "name", "display_name", "description", "icon", "category", "vnc_port",
                    "cpu", "memory_mb", "env", "persistent_home", "idle_timeout_seconds",
                    "platforms", "enabled", "created_at", "updated_at")
# Columns the API may write (everything but the generated ones).
WRITABLE = TEMPLATE_COLUMNS[1:-2]
_JSON_COLUMNS = {"env", "platforms"}
_SELECT = "SELECT " + ", ".join(TEMPLATE_COLUMNS) + " FROM templates"
_RETURNING = " RETURNING " + ", ".join(TEMPLATE_COLUMNS)

# Serialises "load the default catalog when the table is empty" across control planes.
CATALOG_LOCK = 0x53544354


def _template(row: tuple | None) -> dict | None:
    return dict(zip(TEMPLATE_COLUMNS, row, strict=True)) if row is not None else None


def _value(column: str, value):
    return Json(value) if column in _JSON_COLUMNS else value


async def list_templates(db: Database, *, include_disabled: bool,
                         category: str | None = None) -> list[dict]:
    where, params = [], []
    if not include_disabled:
        where.append("enabled")
    if category is not None:
        where.append("category = %s")
        params.append(category)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY name"
    return [_template(r) for r in await db.query(sql, tuple(params))]


async def get(db: Database, name: str) -> dict | None:
    rows = await db.query(_SELECT + " WHERE name = %s", (name,))
    return _template(rows[0]) if rows else None


async def get_for_update(cursor, name: str) -> dict | None:
    return _template(await fetch_one(cursor, _SELECT + " WHERE name = %s FOR UPDATE", (name,)))


async def get_enabled(cursor, name: str) -> dict | None:
    """The template a new session would use (FOR SHARE: not deleted under our feet)."""
    return _template(await fetch_one(
        cursor, _SELECT + " WHERE name = %s AND enabled FOR SHARE", (name,)))


async def create(cursor, fields: dict) -> dict | None:
    """Insert a template; None when the name is taken."""
    columns = [c for c in WRITABLE if c in fields]
    sql = (f"INSERT INTO templates ({', '.join(columns)}) VALUES "
           f"({', '.join(['%s'] * len(columns))}) ON CONFLICT (name) DO NOTHING" + _RETURNING)
    return _template(await fetch_one(cursor, sql, tuple(_value(c, fields[c]) for c in columns)))


async def update(cursor, template_id: str, changes: dict) -> dict | None:
    sets, params = ["updated_at = now()"], []
    for column, value in changes.items():
        if column not in WRITABLE or column == "name":
            raise ValueError(f"not an updatable template column: {column}")
        sets.append(f"{column} = %s")
        params.append(_value(column, value))
    params.append(template_id)
    return _template(await fetch_one(
        cursor, f"UPDATE templates SET {', '.join(sets)} WHERE id = %s" + _RETURNING,
        tuple(params)))


async def delete(cursor, template_id: str) -> None:
    await cursor.execute("DELETE FROM templates WHERE id = %s", (template_id,))


async def count_sessions_using(cursor, template_id: str, exclude_states) -> int:
    row = await fetch_one(cursor, "SELECT count(*) FROM sessions WHERE template_id = %s "
                                  "AND NOT (state = ANY(%s))", (template_id, list(exclude_states)))
    return int(row[0])


async def load_catalog_if_empty(db: Database, templates: list[dict]) -> list[str]:
    """Insert `templates` when the table is empty (first start); the names inserted."""

    async def work(cursor) -> list[str]:
        await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (CATALOG_LOCK,))
        if await fetch_all(cursor, "SELECT 1 FROM templates LIMIT 1"):
            return []
        inserted = []
        for t in templates:
            row = await create(cursor, t)
            if row is not None:
                inserted.append(row["name"])
        return inserted

    return await db.transaction(work)
