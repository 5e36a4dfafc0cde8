"""The one write path for session states.

Every state change goes through `move`, inside the caller's transaction: it locks the
row, checks the state machine (and the state the caller expects), writes the new state,
its progress event, its audit row and its agent command together, so a crash can never
leave a state without its command or a command without its state. Commands are sent by
the hub after the transaction commits (`Moved.command`); until then they wait queued.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from streamspace.db import audit as audit_rows
from streamspace.db import fleet
from streamspace.db import sessions as session_rows
from streamspace.sessions import states


@dataclass(frozen=True)
class Actor:
    """Who caused a change, as the audit log names them."""

    user_id: str | None
    name: str
    client_addr: str = ""
    is_admin: bool = False


SYSTEM = Actor(None, "system")


@dataclass(frozen=True)
class Audit:
    action: str
    actor: Actor
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A command for the session's agent, queued with the move."""

    agent_uuid: str
    command_type: str
    data: dict[str, Any]
    timeout: float


@dataclass
class Moved:
    session_id: str
    before: str
    after: str
    command: dict | None = None  # as queued; the hub sends it after commit


async def move(cursor, session_id: str, target: str, *, message: str = "",
               error: str | None = None, expect: Collection[str] | None = None,
               audit: Audit | None = None, command: Command | None = None,
               touch_activity: bool = False, idle_failures: int | None = None,
               idle_retry_in: float | None = None) -> Moved | None:
    """Move a session if the state machine allows it from its current state (and that
    state is in `expect`, when given). None, and nothing written, otherwise."""
    row = await session_rows.lock_state(cursor, session_id)
    if row is None:
        return None
    before = row["state"]
    if expect is not None and before not in expect:
        return None
    if not states.can_move(before, target):
        return None
    if target == states.FAILED and not error:
        error = message or "failed"
    if target == states.RUNNING and before != states.HIBERNATING:
        touch_activity = True  # started, woken or back: the idle clock starts now
    if target in (states.HIBERNATED, states.WAKING, states.PENDING) and idle_failures is None:
        idle_failures = 0  # hibernated at last, or a fresh start: no idle backoff left
    await session_rows.write_state(cursor, session_id, target, error=error,
                                   touch_activity=touch_activity,
                                   idle_failures=idle_failures, idle_retry_in=idle_retry_in)
    await session_rows.add_event(cursor, session_id, target, error or message)
    if audit is not None:
        await record(cursor, session_id, audit, {"from": before, "to": target})
    moved = Moved(session_id, before, target)
    if command is not None:
        moved.command = await queue(cursor, session_id, command)
    return moved


async def queue(cursor, session_id: str | None, command: Command) -> dict:
    return await fleet.enqueue(cursor, command.agent_uuid, session_id, command.command_type,
                               command.data, command.timeout)


async def record(cursor, session_id: str, audit: Audit, extra: dict | None = None) -> None:
    actor = audit.actor
    await audit_rows.record(
        cursor, actor_id=actor.user_id, actor_name=actor.name, action=audit.action,
        target_type="session", target_id=session_id, client_addr=actor.client_addr,
        details={**(extra or {}), **audit.details})


async def note(cursor, session_id: str, message: str, *, dedupe: bool = False) -> bool:
    """An event in the session's current state without a move (e.g. why it still waits).
    With `dedupe`, nothing is written when the last event says the same."""
    row = await session_rows.lock_state(cursor, session_id)
    if row is None:
        return False
    if dedupe and await session_rows.last_event_message(cursor, session_id) == message:
        return False
    await session_rows.add_event(cursor, session_id, row["state"], message)
    return True
