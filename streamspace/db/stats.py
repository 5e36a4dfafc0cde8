"""Counts for the metrics gauges (agents by status, sessions by state and platform).

Read periodically by streamspace.metrics_refresh, never while a scrape waits."""

from __future__ import annotations

from streamspace.db.pool import Database

AGENT_STATUSES = ("online", "offline")
# Series per (state, platform) are bounded: platforms beyond this many are not reported.
MAX_PLATFORMS = 50


async def fleet_counts(db: Database, states: tuple[str, ...]) -> dict:
    """{"agents": {status: n}, "sessions": {(state, platform): n}, "heartbeat_age": s}.

    Every state in `states` is reported (0 when empty) for every platform seen, so a
    series drops to 0 instead of vanishing; terminated sessions are not counted (they
    only accumulate)."""
    agents = {status: 0 for status in AGENT_STATUSES}
    for status, n in await db.query("SELECT status, count(*) FROM agents GROUP BY status"):
        agents[status] = int(n)
    rows = await db.query(
        "SELECT state, coalesce(platform, 'none'), count(*) FROM sessions "
        "WHERE state <> 'terminated' GROUP BY 1, 2")
    platforms = {r[0] for r in await db.query(
        "SELECT DISTINCT platform FROM agents ORDER BY 1 LIMIT %s", (MAX_PLATFORMS,))}
    platforms |= {r[1] for r in rows}
    platforms = set(sorted(platforms)[:MAX_PLATFORMS])
    sessions = {(state, platform): 0 for state in states for platform in platforms}
    for state, platform, n in rows:
        if platform in platforms:
            sessions[(state, platform)] = int(n)
    age = await db.query(
        "SELECT coalesce(extract(epoch FROM now() - min(last_heartbeat)), 0) FROM agents "
        "WHERE status = 'online'")
    return {"agents": agents, "sessions": sessions, "heartbeat_age": float(age[0][0])}
