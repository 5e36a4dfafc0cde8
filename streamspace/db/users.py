"""User rows: the SQL for accounts."""

from __future__ import annotations

from streamspace.db.pool import Database, fetch_one


async def admin_exists(db: Database) -> bool:
    rows = await db.query("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1")
    return bool(rows)


async def create_initial_admin(db: Database, username: str, password_hash: str) -> bool:
    """Create the first admin unless an admin exists; True when this call created it.

    The check and insert share a transaction-level advisory lock, so two control planes
    starting at once against one database create a single admin.
    """

    async def work(cursor) -> bool:
        await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (0x53544144,))
        if await fetch_one(cursor, "SELECT 1 FROM users WHERE role = 'admin' LIMIT 1"):
            return False
        await cursor.execute(
            "INSERT INTO users (username, password_hash, role, display_name) "
            "VALUES (%s, %s, 'admin', 'Administrator') "
            "ON CONFLICT (username) DO UPDATE SET role = 'admin', "
            "password_hash = EXCLUDED.password_hash, updated_at = now()",
            (username, password_hash))
        await cursor.execute(
            "INSERT INTO audit_log (actor_name, action, target_type, target_id, details) "
            "VALUES ('system', 'user.bootstrap_admin', 'user', %s, '{}')", (username,))
        return True

    return await db.transaction(work)
