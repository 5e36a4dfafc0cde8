"""Revoked token ids (logout, refresh): kept until the token would have expired anyway."""

from __future__ import annotations


async def revoke(cursor, jti: str, expires_at: float) -> None:
    await cursor.execute(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES (%s, to_timestamp(%s)) "
        "ON CONFLICT (jti) DO NOTHING", (jti, expires_at))


async def purge_expired(cursor, now: float) -> None:
    await cursor.execute("DELETE FROM revoked_tokens WHERE expires_at < to_timestamp(%s)",
                         (now,))
