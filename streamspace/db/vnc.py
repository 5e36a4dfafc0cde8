"""What the VNC proxy reads and writes: who may view a session, single-use VNC tokens,
input activity, and the periodic re-check of live viewers.

VNC token ids go into `revoked_tokens` when they are used: the insert either claims the id
or finds it claimed, so a replay is refused by whichever replica sees it, across restarts.
"""

from __future__ import annotations

from streamspace.db.pool import Database

_VIEWER_COLUMNS = (
    "SELECT s.user_id, s.state, s.agent_id, v.id, v.username, v.role, v.disabled, "
    "extract(epoch FROM v.tokens_valid_after)::float8 "
    "FROM sessions s LEFT JOIN users v ON v.id = %s WHERE s.id = %s")


async def viewer_target(db: Database, session_id: str, viewer_id: str) -> dict | None:
    """The session (owner, state, agent) and the would-be viewer as they are now;
    None when the session does not exist. `viewer` is None when the user does not."""
    rows = await db.query(_VIEWER_COLUMNS, (viewer_id, session_id))
    if not rows:
        return None
    owner, state, agent_id, vid, username, role, disabled, valid_after = rows[0]
    viewer = None
    if vid is not None:
        viewer = {"id": str(vid), "username": username, "role": role,
                  "disabled": bool(disabled), "tokens_valid_after": valid_after or 0.0}
    return {"owner_id": str(owner), "state": state,
            "agent_id": str(agent_id) if agent_id else None, "viewer": viewer}


async def use_token(db: Database, jti: str, expires_at: float) -> bool:
    """Claim a VNC token id: True the first time, False for a replay."""
    rows = await db.query(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES (%s, to_timestamp(%s)) "
        "ON CONFLICT (jti) DO NOTHING RETURNING jti", (jti, expires_at))
    return bool(rows)


async def touch_activity(db: Database, session_id: str) -> None:
    await db.execute("UPDATE sessions SET last_activity = now() WHERE id = %s", (session_id,))


async def viewers_now(db: Database, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """For (session id, viewer id) pairs of live tunnels: the session's owner and state and
    the viewer's account as they are now (missing rows come back as None fields)."""
    if not pairs:
        return {}
    rows = await db.query(
        "SELECT p.sid, p.vid, s.user_id, s.state, v.id, v.role, v.disabled, "
        "extract(epoch FROM v.tokens_valid_after)::float8 "
        "FROM unnest(%s::uuid[], %s::uuid[]) AS p(sid, vid) "
        "LEFT JOIN sessions s ON s.id = p.sid LEFT JOIN users v ON v.id = p.vid",
        ([p[0] for p in pairs], [p[1] for p in pairs]))
    out = {}
    for sid, vid, owner, state, exists, role, disabled, valid_after in rows:
        out[(str(sid), str(vid))] = {
            "owner_id": str(owner) if owner else None, "state": state,
            "viewer": None if exists is None else {
                "id": str(vid), "role": role, "disabled": bool(disabled),
                "tokens_valid_after": valid_after or 0.0}}
    return out


async def forget_used_tokens(db: Database, now: float) -> None:
    """Used token ids are kept only until the token would have expired anyway."""
    await db.execute("DELETE FROM revoked_tokens WHERE expires_at < to_timestamp(%s)", (now,))
