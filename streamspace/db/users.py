"""User rows: the SQL for accounts."""

from __future__ import annotations

from streamspace.db.pool import Database, fetch_all, fetch_one


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


# --- accounts (the REST API) ---------------------------------------------------------

USER_COLUMNS = ("id", "username", "role", "display_name", "email", "disabled", "max_sessions",
                "created_at", "updated_at")
_SELECT_USER = "SELECT " + ", ".join(USER_COLUMNS) + " FROM users"
# Columns an update may set (the API validates values before they get here).
UPDATABLE = ("role", "display_name", "email", "disabled", "max_sessions", "password_hash")


def _user(row: tuple | None) -> dict | None:
    return dict(zip(USER_COLUMNS, row, strict=True)) if row is not None else None


async def auth_state(db: Database, user_id: str, jti: str) -> dict | None:
    """What a request needs to trust a token: the user as it is now, and the jti's status."""
    rows = await db.query(
        "SELECT u.id, u.username, u.role, u.disabled, u.max_sessions, "
        "extract(epoch FROM u.tokens_valid_after)::float8, "
        "EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = %s) "
        "FROM users u WHERE u.id = %s", (jti, user_id))
    if not rows:
        return None
    uid, username, role, disabled, max_sessions, valid_after, revoked = rows[0]
    return {"id": uid, "username": username, "role": role, "disabled": disabled,
            "max_sessions": max_sessions, "tokens_valid_after": valid_after,
            "revoked": revoked}


async def get_for_login(db: Database, username: str) -> dict | None:
    rows = await db.query(_SELECT_USER.replace(" FROM", ", password_hash FROM")
                          + " WHERE username = %s", (username,))
    if not rows:
        return None
    user = _user(rows[0][:-1])
    user["password_hash"] = rows[0][-1]
    return user


async def password_hash_of(cursor, user_id: str) -> str | None:
    row = await fetch_one(cursor, "SELECT password_hash FROM users WHERE id = %s FOR UPDATE",
                          (user_id,))
    return row[0] if row else None


async def get(db: Database, user_id: str) -> dict | None:
    rows = await db.query(_SELECT_USER + " WHERE id = %s", (user_id,))
    return _user(rows[0]) if rows else None


async def get_by_username(cursor, username: str) -> dict | None:
    return _user(await fetch_one(cursor, _SELECT_USER + " WHERE username = %s", (username,)))


async def list_users(db: Database, *, role: str | None = None,
                     disabled: bool | None = None) -> list[dict]:
    where, params = [], []
    if role is not None:
        where.append("role = %s")
        params.append(role)
    if disabled is not None:
        where.append("disabled = %s")
        params.append(disabled)
    sql = _SELECT_USER + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY username"
    return [_user(r) for r in await db.query(sql, tuple(params))]


async def create(cursor, *, username: str, password_hash: str, role: str, display_name: str,
                 email: str, max_sessions: int | None) -> dict | None:
    """Insert a user; None when the username is taken."""
    return _user(await fetch_one(
        cursor,
        "INSERT INTO users (username, password_hash, role, display_name, email, max_sessions) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (username) DO NOTHING RETURNING "
        + ", ".join(USER_COLUMNS),
        (username, password_hash, role, display_name, email, max_sessions)))


async def lock(cursor, user_id: str) -> dict | None:
    """The user row, locked until the transaction ends (serialises per-user checks)."""
    return _user(await fetch_one(cursor, _SELECT_USER + " WHERE id = %s FOR UPDATE",
                                 (user_id,)))


async def lock_active_admins(cursor) -> list[str]:
    rows = await fetch_all(cursor, "SELECT id FROM users WHERE role = 'admin' AND NOT disabled "
                                   "ORDER BY id FOR UPDATE")
    return [r[0] for r in rows]


async def update(cursor, user_id: str, changes: dict, *,
                 invalidate_tokens_at: float | None = None) -> dict | None:
    """Apply `changes` (keys from UPDATABLE); optionally end every token issued before
    `invalidate_tokens_at` (epoch seconds on the control plane's clock)."""
    sets, params = ["updated_at = now()"], []
    for key, value in changes.items():
        if key not in UPDATABLE:
            raise ValueError(f"not an updatable user column: {key}")
        sets.append(f"{key} = %s")
        params.append(value)
    if invalidate_tokens_at is not None:
        sets.append("tokens_valid_after = to_timestamp(%s)")
        params.append(invalidate_tokens_at)
    params.append(user_id)
    return _user(await fetch_one(
        cursor, f"UPDATE users SET {', '.join(sets)} WHERE id = %s RETURNING "
        + ", ".join(USER_COLUMNS), tuple(params)))


async def delete(cursor, user_id: str) -> bool:
    row = await fetch_one(cursor, "DELETE FROM users WHERE id = %s RETURNING id", (user_id,))
    return row is not None



async def count_unfinished_sessions(cursor, user_id: str, finished_states) -> int:
    row = await fetch_one(cursor, "SELECT count(*) FROM sessions WHERE user_id = %s "
                                  "AND NOT (state = ANY(%s))", (user_id, list(finished_states)))
    return int(row[0])
