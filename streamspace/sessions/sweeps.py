"""The lifecycle's periodic sweep: deadlines, pending sessions, stuck ones, idle ones.

Each step lists candidates, then handles each in its own transaction that re-checks,
under a row lock, that what it read still holds (the state, the deadline, the idle clock):
a session that just became `running` is never failed as stuck. A row locked elsewhere is
skipped (`SKIP LOCKED`) and looked at again next time, so several control-plane replicas
can sweep at once without doing the same work twice. One bad row is logged and skipped;
it never aborts the sweep for the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.logger import Logger

from streamspace.db import fleet
from streamspace.db import sessions as session_rows
from streamspace.db.pool import Database, DatabaseUnavailable
from streamspace.sessions import moves, placement, reports, states
from streamspace.sessions.moves import SYSTEM, Audit
from streamspace.sessions.reports import Changes

log = Logger()

# A queued command not sent this long after it was queued lost its post-commit delivery
# (or the agent was away); the sweep sends it.
REDELIVER_AFTER = 2.0


class Sweeper:
    def __init__(self, db: Database, command_timeout: float) -> None:
        self.db = db
        self.command_timeout = command_timeout
        self.idle_timeout = 0.0  # SESSION_IDLE_TIMEOUT; a template's own timeout wins
        self.timeouts = dict(states.TRANSITIONAL_TIMEOUTS)

    async def sweep(self) -> Changes:
        """One pass; returns what changed (to publish) and commands to send."""
        changes = Changes()
        for step in (self.expire_commands, self.place_pending, self.fail_stuck,
                     self.hibernate_idle):
            try:
                await step(changes)
            except DatabaseUnavailable:
                raise  # nothing else will work either; the next sweep retries
            except Exception:
                log.failure("lifecycle sweep step {step} failed", step=step.__name__)
        return changes

    async def _each(self, ids: list[str], work: Callable[[object, str], Awaitable[object]],
                    changes: Changes, what: str) -> None:
        for item in ids:
            try:
                result = await self.db.transaction(lambda cursor, i=item: work(cursor, i))
            except DatabaseUnavailable:
                raise
            except Exception:
                log.failure("lifecycle sweep: {what} {id} failed; skipped", what=what, id=item)
                continue
            if isinstance(result, Changes):
                changes.sessions += result.sessions
                changes.commands += result.commands
            elif isinstance(result, moves.Moved):
                changes.add(result)

    # -- steps ----------------------------------------------------------------------------

    async def expire_commands(self, changes: Changes) -> None:
        """Commands past their deadline become `timeout`; their sessions move on."""
        async def expire(cursor, command_id):
            session_id = await fleet.session_of(cursor, command_id)
            if session_id is not None:
                await session_rows.lock_state(cursor, session_id)
            cmd = await fleet.expire(cursor, command_id)
            if cmd is None or not cmd["session_id"]:
                return None
            outcome = states.OUTCOMES.get(cmd["command_type"])
            if outcome is None:
                return None
            text = (f"the agent did not {outcome.what} the session within "
                    f"{self.command_timeout:.0f}s (command timed out)")
            return await reports.unsuccessful(cursor, cmd["session_id"], cmd["command_type"],
                                              text, timed_out=True)

        await self._each(await fleet.overdue(self.db), expire, changes, "command")

    async def place_pending(self, changes: Changes) -> None:
        """Pending sessions wait for an agent with room: try each again."""
        async def place(cursor, session_id):
            placed = await placement.place(cursor, session_id, self.command_timeout,
                                           skip_locked=True)
            return placed.moved if placed is not None else None

        await self._each(await session_rows.ids_in_state(self.db, [states.PENDING]), place,
                         changes, "placing session")

    async def fail_stuck(self, changes: Changes) -> None:
        """A session past its state's deadline fails with a reason (pending: why it
        could not be placed)."""
        for state, seconds in self.timeouts.items():
            async def fail(cursor, session_id, state=state, seconds=seconds):
                if not await session_rows.lock_if_in_state(cursor, session_id, state, seconds):
                    return None
                if state == states.PENDING:
                    last = await session_rows.last_event_message(cursor, session_id) or ""
                    why = last[len(placement.WAITING_PREFIX):] \
                        if last.startswith(placement.WAITING_PREFIX) else "none was available"
                    error = f"no agent could take this session within {seconds:.0f}s: {why}"
                else:
                    error = f"the session stayed `{state}` longer than {seconds:.0f}s"
                return await moves.move(cursor, session_id, states.FAILED, error=error,
                                        expect={state})

            ids = await session_rows.ids_in_state(self.db, [state], older_than=seconds)
            await self._each(ids, fail, changes, f"failing stuck {state} session")

    async def hibernate_idle(self, changes: Changes) -> None:
        """No keyboard or mouse input for its idle timeout: hibernate through the queue,
        audited as the system's doing."""
        async def hibernate(cursor, session_id):
            if not await session_rows.lock_if_idle(cursor, session_id, states.RUNNING,
                                                   self.idle_timeout):
                return None
            row = await session_rows.lock_state(cursor, session_id)
            if row["agent_id"] is None:
                return None
            attempt = row["idle_failures"] + 1
            message = "idle: hibernating" + (
                f" (attempt {attempt}; the last one failed)" if attempt > 1 else "")
            log.info("session {session_id} idle: hibernating", session_id=session_id)
            return await moves.move(
                cursor, session_id, states.HIBERNATING, message=message,
                expect={states.RUNNING}, idle_failures=attempt,
                audit=Audit("session.hibernate", SYSTEM, {"reason": "idle",
                                                          "attempt": attempt}),
                command=moves.Command(row["agent_id"], "hibernate_session", {},
                                      self.command_timeout))

        ids = await session_rows.idle_ids(self.db, states.RUNNING, self.idle_timeout)
        await self._each(ids, hibernate, changes, "idle hibernation of")
