"""What users ask of sessions: create, hibernate, wake, restart, delete.

Each request is one transaction through the write path (`moves`): the state change, its
agent command and its audit row commit together. The per-user concurrent-session limit is
checked here, under a lock on the owner's row, for everything that makes a session active
again (create, wake, restart), so racing requests count one after another. A wake also
needs room on the session's own agent (its data is there), checked under that agent's row
lock; a wake that cannot be placed is refused and the session stays `hibernated`.

Refusals are `Refused(code, message)`; the API layer turns them into HTTP answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamspace.db import fleet, templates, users
from streamspace.db import sessions as session_rows
from streamspace.sessions import moves, placement, states
from streamspace.sessions.moves import Actor, Audit

# Asking again for what is already happening changes nothing.
IN_PROGRESS = {"hibernated": states.HIBERNATING, "running": states.WAKING}


class Refused(Exception):
    """A request the rules refuse; `code` says which rule, `message` is for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class NewSession:
    template: str
    owner: str  # username
    name: str | None = None
    platform: str | None = None
    region: str | None = None


async def _limit_check(cursor, owner: dict, actor: Actor, default_limit: int) -> None:
    """Refuse when the (locked) owner is at their limit of active sessions."""
    limit = owner["max_sessions"]
    if limit is None:
        limit = default_limit
    active = await session_rows.count_by_states(cursor, owner["id"], states.ACTIVE_STATES)
    if active >= limit:
        who = "you have" if owner["id"] == actor.user_id else f"{owner['username']} has"
        raise Refused("session_limit_reached",
                      f"{who} {active} active session(s) and the limit is {limit}; "
                      "delete or hibernate a session first")


async def create(db, actor: Actor, new: NewSession, default_limit: int) -> str:
    async def work(cursor):
        found = await users.get_by_username(cursor, new.owner)
        owner = await users.lock(cursor, found["id"]) if found else None
        if owner is None or owner["disabled"]:
            raise Refused("unknown_user", f"no active user named `{new.owner}`")
        owner = {**owner, "username": new.owner}
        # The owner's row is locked until commit: the limit holds however many race.
        await _limit_check(cursor, owner, actor, default_limit)
        template = await templates.get_enabled(cursor, new.template)
        if template is None:
            raise Refused("unknown_template", f"no enabled template named `{new.template}`")
        offered = template["platforms"] or {}
        if new.platform is not None and offered and new.platform not in offered:
            raise Refused("unsupported_platform",
                          f"template `{template['name']}` does not run on `{new.platform}` "
                          f"(it runs on: {', '.join(sorted(offered))})")
        session_id = await session_rows.insert(
            cursor, user_id=owner["id"], template_id=template["id"],
            template_name=template["name"], name=new.name or template["name"],
            state=states.PENDING, requested_platform=new.platform,
            requested_region=new.region)
        await session_rows.add_event(cursor, session_id, states.PENDING, "session requested")
        await moves.record(cursor, session_id, Audit(
            "session.create", actor, {"template": template["name"], "owner": new.owner}))
        return session_id

    return await db.transaction(work)


async def _owned(cursor, session_id: str, owner_id: str | None) -> dict:
    row = await session_rows.lock(cursor, session_id, owner_id=owner_id)
    if row is None:
        raise Refused("not_found", "no such session")
    return row


async def change_state(db, actor: Actor, session_id: str, requested: str, *,
                       owner_id: str | None, default_limit: int,
                       command_timeout: float) -> str | None:
    """PATCH {state}: hibernate a running session, wake a hibernated one, restart a
    stopped or failed one. The state moved to, or None when nothing changed (asking again
    for what is already happening, or done)."""

    async def work(cursor):
        row = await _owned(cursor, session_id, owner_id)
        current = row["state"]
        if current in (requested, IN_PROGRESS.get(requested)):
            return None
        try:
            target = states.requested_transition(current, requested)
        except states.InvalidTransition as e:
            raise Refused("invalid_state_transition", str(e)) from None
        if target in (states.WAKING, states.PENDING):  # active again: it counts
            owner = await users.lock(cursor, str(row["user_id"]))
            await _limit_check(cursor, {**owner, "username": row["owner"]}, actor,
                               default_limit)
        details = {"requested": requested}
        if target == states.PENDING:
            return await _restart(cursor, actor, session_id, details)
        session = await session_rows.for_command(cursor, session_id)
        agent = session["agent_id"]
        if agent is None:
            raise Refused("invalid_state_transition", "the session is not on any agent")
        data: dict = {}
        if target == states.WAKING:
            why = await placement.room_on_own_agent(cursor, session_id, agent,
                                                    session["template"])
            if why is not None:
                raise Refused("cannot_wake", f"the session stays hibernated: {why}")
            data = {"template": session["template"], "user": session["user"]}
        moved = await moves.move(
            cursor, session_id, target, message=f"{requested} requested", expect={current},
            audit=Audit("session.state_change", actor, details),
            command=moves.Command(agent, states.REQUEST_COMMANDS[target], data,
                                  command_timeout))
        return moved.after

    return await db.transaction(work)


async def _restart(cursor, actor: Actor, session_id: str, details: dict) -> str:
    session = await session_rows.for_command(cursor, session_id)
    if not session["template_exists"] or not session["template_enabled"]:
        raise Refused("unknown_template",
                      f"template `{session['template']['name']}` is no longer available")
    await fleet.cancel_for_session(cursor, session_id)
    moved = await moves.move(cursor, session_id, states.PENDING,
                             message="restart requested (same template, same home)",
                             audit=Audit("session.restart", actor, details))
    return moved.after


async def delete(db, actor: Actor, session_id: str, *, owner_id: str | None,
                 command_timeout: float) -> tuple[str, str | None]:
    """(state before, state after or None when already terminating/terminated)."""

    async def work(cursor):
        row = await _owned(cursor, session_id, owner_id)
        current, agent = row["state"], row["agent_uuid"]
        agent = str(agent) if agent else None
        if current in (states.TERMINATED, states.TERMINATING):
            return current, None
        audit = Audit("session.delete", actor)
        if agent is None and states.can_move(current, states.TERMINATED):
            # it never reached an agent: nothing to stop, it ends at once
            moved = await moves.move(cursor, session_id, states.TERMINATED,
                                     message="deletion requested", audit=audit)
            return current, moved.after
        if not states.can_move(current, states.TERMINATING):
            raise Refused("invalid_state_transition",
                          f"a session cannot go from `{current}` to `terminating`")
        await fleet.cancel_for_session(cursor, session_id)
        moved = await moves.move(
            cursor, session_id, states.TERMINATING, message="deletion requested", audit=audit,
            command=moves.Command(agent, "stop_session", {}, command_timeout) if agent else None)
        if agent is not None and await fleet.is_online(cursor, agent):
            return current, moved.after
        # Don't keep a user waiting on an absent agent: the stop stays queued and cleans
        # up when the agent returns (or its reconciliation does).
        await moves.move(cursor, session_id, states.TERMINATED,
                         message="terminated; the agent is offline and will stop it when "
                                 "it reconnects" if agent else
                                 "terminated (it was not on any agent)")
        return current, states.TERMINATED

    return await db.transaction(work)
