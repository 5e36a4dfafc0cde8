"""What agents report, turned into session moves (each inside the caller's transaction).

Acks and outcomes of commands; unsolicited status (the application exited, a process
died); and the session lists of `register` and every `heartbeat`, reconciled with what
the database believes: the agent's driver answers from what really runs, so a session it
does not report (and no command is on its way for) is gone, and one it runs that the
control plane considers ended is stopped. Every move goes through `moves`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamspace.db import fleet
from streamspace.db import sessions as session_rows
from streamspace.sessions import moves, states
from streamspace.sessions.moves import SYSTEM, Audit

# The states an agent may report a session in (register, heartbeat).
REPORTED_STATES = ("starting", "running", "hibernated")
# Unsolicited statuses (session_status) that end a session, and the state they lead to.
STATUS_MOVES = {"stopped": states.STOPPED, "failed": states.FAILED}
STATUS_FROM = frozenset({states.STARTING, states.RUNNING, states.WAKING, states.UNREACHABLE})
# Reported state -> the control plane's state it settles a session in (when no command
# is on its way): a hibernate or wake whose answer was lost is recognised from the report.
SETTLE = {"running": states.RUNNING, "hibernated": states.HIBERNATED}
SETTLE_FROM = frozenset({states.RUNNING, states.HIBERNATED, states.UNREACHABLE})
# The agent no longer has it: gone, unless a command is on its way (a start, a wake).
LOST_FROM = frozenset({states.RUNNING, states.HIBERNATED, states.UNREACHABLE})


@dataclass
class Changes:
    """What a transaction changed: sessions to publish, commands to send after commit."""

    sessions: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)

    def add(self, moved: moves.Moved | None) -> bool:
        if moved is None:
            return False
        self.sessions.append(moved.session_id)
        if moved.command is not None:
            self.commands.append(moved.command)
        return True


async def _lock_session_of(cursor, command_id: str) -> None:
    """Lock a command's session before the command row: the order every writer uses."""
    session_id = await fleet.session_of(cursor, command_id)
    if session_id is not None:
        await session_rows.lock_state(cursor, session_id)


async def command_acked(cursor, agent_uuid: str, command_id: str) -> Changes:
    changes = Changes()
    await _lock_session_of(cursor, command_id)
    cmd = await fleet.mark_acked(cursor, command_id, agent_uuid)
    if cmd and cmd["session_id"] and cmd["command_type"] == "start_session":
        changes.add(await moves.move(cursor, cmd["session_id"], states.STARTING,
                                     message="the agent is starting the session",
                                     expect={states.SCHEDULED}))
    return changes


async def command_finished(cursor, agent_uuid: str, command_id: str, ok: bool,
                           reason: str | None) -> Changes:
    changes = Changes()
    await _lock_session_of(cursor, command_id)
    cmd = await fleet.finish(cursor, command_id, agent_uuid, "completed" if ok else "failed",
                             {} if ok else None, reason)
    if cmd is None or not cmd["session_id"]:
        return changes
    sid, kind = cmd["session_id"], cmd["command_type"]
    outcome = states.OUTCOMES.get(kind)
    if outcome is None:
        return changes
    if ok:
        if kind == "start_session":
            # a completion may overtake its ack: pass through `starting`
            changes.add(await moves.move(cursor, sid, states.STARTING, expect={states.SCHEDULED},
                                         message="the agent is starting the session"))
        changes.add(await moves.move(cursor, sid, outcome.success, expect=outcome.expect,
                                     message=f"the session is {outcome.success}"))
    else:
        changes.add(await unsuccessful(cursor, sid, kind,
                                       reason or "the agent reported a failure"))
    return changes


async def unsuccessful(cursor, session_id: str, command_type: str, text: str, *,
                       timed_out: bool = False) -> moves.Moved | None:
    """A lifecycle command failed or timed out: where its session goes (`Outcome`).

    A start or stop fails the session. A hibernate or wake leaves it where it was
    (running, or hibernated with its data kept); a failed idle hibernation backs off
    before the idle sweep tries again. While the session is `unreachable`, a hibernate or
    wake that timed out leaves it there: the agent's report on its return decides."""
    outcome = states.OUTCOMES[command_type]
    row = await session_rows.lock_state(cursor, session_id)
    if row is None or row["state"] not in outcome.expect:
        return None
    target = outcome.timeout if timed_out else outcome.failure
    if timed_out and outcome.keep_unreachable and row["state"] == states.UNREACHABLE:
        return None
    if target == states.FAILED:
        return await moves.move(cursor, session_id, states.FAILED, error=text,
                                expect=outcome.expect)
    message = f"{command_type} failed: {text}"
    retry = None
    if command_type == "hibernate_session" and row["idle_failures"]:
        retry = idle_backoff(row["idle_failures"])
        message += f"; the idle hibernation is tried again in {retry:.0f}s"
    return await moves.move(cursor, session_id, target, expect=outcome.expect, message=message,
                            error=text if target == states.HIBERNATED else None,
                            idle_retry_in=retry)


IDLE_RETRY_BASE = 30.0
IDLE_RETRY_MAX = 3600.0


def idle_backoff(failures: int) -> float:
    """Seconds before the next idle hibernation after `failures` failed ones in a row."""
    return min(IDLE_RETRY_BASE * 2 ** max(failures - 1, 0), IDLE_RETRY_MAX)


async def session_status(cursor, agent_uuid: str, session_id: str, state: str,
                         reason: str) -> Changes:
    """An unsolicited report: the session stopped (its application exited) or failed."""
    changes = Changes()
    target = STATUS_MOVES.get(state)
    row = await session_rows.lock_state(cursor, session_id)
    if target is None or row is None or row["agent_id"] != agent_uuid:
        return changes  # `running` is no news; another agent's session is not its business
    if target == states.STOPPED:
        changes.add(await moves.move(cursor, session_id, states.STOPPED, expect=STATUS_FROM,
                                     message=reason or "the session's application exited"))
    else:
        changes.add(await moves.move(cursor, session_id, states.FAILED, expect=STATUS_FROM,
                                     error=reason or f"the session {state} on its agent"))
    return changes


async def reconcile(cursor, agent_uuid: str, reported: dict[str, str], *,
                    registering: bool, command_timeout: float) -> Changes:
    """Make the database agree with what the agent runs (`reported`: id -> state)."""
    changes = Changes()
    alive = [s for s in states.ALL_STATES if s not in states.FINAL_STATES]
    ours = await session_rows.ids_of_agent(cursor, agent_uuid, alive)
    locked = await session_rows.lock_agent_sessions(cursor, agent_uuid, alive)
    for sid, (state, busy) in (await session_rows.states_with_commands(cursor, locked)).items():
        if busy:
            continue  # a command is on its way; its answer decides
        seen = reported.get(sid)
        if seen is None:
            if state in LOST_FROM:
                why = ("the agent restarted and no longer has this session" if registering
                       else "the agent no longer has this session")
                changes.add(await moves.move(
                    cursor, sid, states.FAILED, error=why, expect=LOST_FROM,
                    audit=Audit("session.lost", SYSTEM, {"reason": why})))
        elif state in states.ENDED_STATES - {states.TERMINATED}:
            if seen != "hibernated":  # running processes the control plane let go of
                command = await moves.queue(cursor, sid, moves.Command(
                    agent_uuid, "stop_session", {}, command_timeout))
                changes.commands.append(command)
        elif state in SETTLE_FROM and seen in SETTLE and SETTLE[seen] != state:
            changes.add(await moves.move(cursor, sid, SETTLE[seen], expect={state},
                                         message=f"the agent reports it {seen}"))
    stopping = await fleet.stops_in_flight(cursor, agent_uuid)
    for sid in reported:
        if sid not in ours and sid not in stopping:
            # unknown here, terminated, or another agent's: it must not keep running
            changes.commands.append(await moves.queue(cursor, None, moves.Command(
                agent_uuid, "stop_session",
                {"session_id": sid, "reason": "unknown to the control plane"},
                command_timeout)))
    return changes


async def agent_offline(cursor, agent_uuid: str, conn_id: str | None, reason: str
                        ) -> Changes:
    """Its connection ended: offline (only if `conn_id` is still the live one), and its
    agent-bound sessions `unreachable` until it returns. Sessions are locked before the
    agent row, the order every other writer takes them in."""
    changes = Changes()
    locked = await session_rows.lock_agent_sessions(cursor, agent_uuid, states.AGENT_BOUND,
                                                    skip_locked=False)
    if not await fleet.set_offline(cursor, agent_uuid, conn_id):
        return changes
    for sid in locked:
        changes.add(await moves.move(cursor, sid, states.UNREACHABLE,
                                     expect=states.AGENT_BOUND,
                                     message=f"agent went offline: {reason}"))
    return changes
