"""Placing sessions on agents, inside the caller's transaction.

A pending session goes to the least-loaded matching agent with room; a restarted one
(it has an agent already) only to that agent, where its home is. Candidate agents are
locked before counting, so concurrent placements, wakes and restarts cannot overfill one.
When nothing can take it, the session stays `pending` and the reason goes into its
events (once per distinct reason), for the user to read while it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamspace.db import fleet
from streamspace.db import sessions as session_rows
from streamspace.sessions import moves, states
from streamspace.sessions.scheduler import choose_agent, room_for

WAITING_PREFIX = "waiting for an agent: "


@dataclass
class Placed:
    moved: moves.Moved | None  # scheduled (with its start command), or failed
    waiting: str | None = None  # why it still waits


async def place(cursor, session_id: str, command_timeout: float, *,
                skip_locked: bool = False) -> Placed | None:
    """Place one `pending` session; None when it is not pending (or locked elsewhere)."""
    row = await session_rows.lock_state(cursor, session_id, skip_locked=skip_locked)
    if row is None or row["state"] != states.PENDING:
        return None
    session = await session_rows.for_command(cursor, session_id)
    if not session["template_exists"]:
        return Placed(await moves.move(cursor, session_id, states.FAILED,
                                       error="its template was deleted"))
    pinned = row["agent_id"]
    if pinned:
        candidates = await fleet.candidate_agents(cursor, None, None, states.ACTIVE_STATES,
                                                  only=pinned, exclude_session=session_id)
    else:
        candidates = await fleet.candidate_agents(
            cursor, session["requested_platform"], session["requested_region"],
            states.ACTIVE_STATES, exclude_session=session_id)
    agent, why_not = choose_agent(candidates, session["template"])
    if agent is None:
        if pinned and not candidates:
            name = await fleet.agent_name(cursor, pinned) or "?"
            why_not = f"its agent {name} (where its home is) is offline"
        await moves.note(cursor, session_id, WAITING_PREFIX + why_not, dedupe=True)
        return Placed(None, why_not)
    if not pinned:
        await session_rows.assign(cursor, session_id, agent)
    moved = await moves.move(
        cursor, session_id, states.SCHEDULED, message=f"scheduled on agent {agent['agent_id']}",
        command=moves.Command(agent["id"], "start_session", {
            "template": session["template"], "user": session["user"],
            "name": session["name"]}, command_timeout))
    return Placed(moved)


async def room_on_own_agent(cursor, session_id: str, agent_uuid: str | None,
                            template: dict) -> str | None:
    """None when the session's agent is online and can take it back (a wake), else why
    not. Locks the agent row, like placement, so the check and the move are atomic."""
    if agent_uuid is None:
        return "the session is not on any agent"
    found = await fleet.candidate_agents(cursor, None, None, states.ACTIVE_STATES,
                                         only=agent_uuid, exclude_session=session_id)
    if not found:
        name = await fleet.agent_name(cursor, agent_uuid) or "its agent"
        return f"agent {name} is offline; try again once it is back"
    why = room_for(found[0], template)
    return f"no room on agent {found[0]['agent_id']}: {why}" if why else None
