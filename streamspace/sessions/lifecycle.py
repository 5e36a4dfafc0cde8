"""Session lifecycle: turning user requests and agent reports into state moves.

Every move goes through `fleet.move_session`, which applies the closed state machine and
records a progress event in the same transaction as the change. Commands are queued in the
database first and sent after commit, so a crash between the two loses nothing: the command
is still `pending` and goes out when the agent (re)registers.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from streamspace.agents.hub import AgentHub
from streamspace.db import fleet
from streamspace.db.pool import Database, fetch_all
from streamspace.sessions import states
from streamspace.sessions.scheduler import choose_agent
from streamspace_common import wire

log = Logger()

# A session still `pending` this long after creation missed its scheduling (the control
# plane stopped between the API's commit and the scheduler); the sweep schedules it.
RESCHEDULE_AFTER = 5.0

# command type -> (state on success, state on failure, what the user reads on timeout)
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "start_session": (states.RUNNING, states.FAILED, "the agent did not start the session"),
    "wake_session": (states.RUNNING, states.FAILED, "the agent did not wake the session"),
    "hibernate_session": (states.HIBERNATED, states.RUNNING,
                          "the agent did not hibernate the session"),
    "stop_session": (states.TERMINATED, states.FAILED, "the agent did not stop the session"),
}


class SessionLifecycle:
    def __init__(self, reactor, db: Database, hub: AgentHub, command_timeout: float) -> None:
        self.reactor = reactor
        self.db = db
        self.hub = hub
        self.command_timeout = command_timeout
        self.listeners: list[Callable[[str], None]] = []
        self.idle_timeout = 0.0  # SESSION_IDLE_TIMEOUT; a template's own timeout wins
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = reactor

    # -- notifications (the SSE endpoint listens) ----------------------------------------

    def publish(self, session_id: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(session_id)
            except Exception:
                log.failure("session listener failed")

    def publish_many(self, session_ids: list[str]) -> None:
        for sid in session_ids:
            self.publish(sid)

    # -- user requests (called by the API after its transaction commits) -----------------

    async def session_created(self, session_id: str) -> None:
        async def work(cursor):
            session = await fleet.session_for_command(cursor, session_id)
            if session is None or session["state"] != states.PENDING:
                return None
            candidates = await fleet.candidate_agents(
                cursor, session["requested_platform"], session["requested_region"])
            agent, why_not = choose_agent(candidates, session["template"])
            if agent is None:
                await fleet.move_session(cursor, session_id, states.FAILED, error=why_not)
                return None
            await fleet.assign_session(cursor, session_id, agent)
            await fleet.move_session(cursor, session_id, states.SCHEDULED,
                                     message=f"scheduled on agent {agent['agent_id']}")
            return await self._queue(cursor, agent["id"], session, "start_session", {
                "template": session["template"], "user": session["user"],
                "name": session["name"]})

        command = await self.db.transaction(work)
        self.publish(session_id)
        if command:
            await self.hub.deliver(command["agent_id"], command)

    async def state_requested(self, session_id: str, new_state: str) -> None:
        """The API moved the session to hibernating / waking / terminating: act on it."""
        command_type = {states.HIBERNATING: "hibernate_session", states.WAKING: "wake_session",
                        states.TERMINATING: "stop_session"}.get(new_state)
        if command_type is None:
            return

        async def work(cursor):
            session = await fleet.session_for_command(cursor, session_id)
            if session is None or session["state"] != new_state:
                return None
            agent_uuid = session["agent_id"]
            if agent_uuid is None:
                if new_state == states.TERMINATING:
                    await fleet.move_session(cursor, session_id, states.TERMINATED,
                                             message="terminated (it was not on any agent)")
                else:
                    await fleet.move_session(cursor, session_id, states.FAILED,
                                             error="the session has no agent")
                return None
            if new_state == states.TERMINATING:
                await fleet.cancel_for_session(cursor, session_id)
            data = {"template": session["template"]} if command_type == "wake_session" else {}
            command = await self._queue(cursor, agent_uuid, session, command_type, data)
            if new_state == states.TERMINATING and not self.hub.connected(agent_uuid):
                # Don't keep a user waiting on an absent agent: the stop stays queued and
                # cleans up when the agent returns (or its reconciliation does).
                await fleet.move_session(cursor, session_id, states.TERMINATED,
                                         message="terminated; the agent is offline and will "
                                                 "stop it when it reconnects")
            return command

        command = await self.db.transaction(work)
        self.publish(session_id)
        if command:
            await self.hub.deliver(command["agent_id"], command)

    async def _queue(self, cursor, agent_uuid: str, session: dict, command_type: str,
                     data: dict) -> dict:
        command_id = await fleet.enqueue(cursor, agent_uuid, session["id"], command_type, data,
                                         self.command_timeout)
        return {"id": command_id, "agent_id": agent_uuid, "command_type": command_type,
                "session_id": session["id"], "data": data,
                "deadline": wire.iso_utc(self.reactor.seconds() + self.command_timeout)}

    # -- agent reports --------------------------------------------------------------------

    async def command_acked(self, agent_uuid: str, command_id: str) -> None:
        async def work(cursor):
            cmd = await fleet.mark_acked(cursor, command_id, agent_uuid)
            if cmd and cmd["session_id"] and cmd["command_type"] == "start_session":
                await fleet.move_session(cursor, cmd["session_id"], states.STARTING,
                                         message="the agent is starting the session")
            return cmd

        cmd = await self.db.transaction(work)
        if cmd and cmd["session_id"]:
            self.publish(cmd["session_id"])

    async def command_finished(self, agent_uuid: str, command_id: str, ok: bool,
                               result: dict | None, reason: str | None) -> None:
        async def work(cursor):
            cmd = await fleet.finish(cursor, command_id, agent_uuid,
                                     "completed" if ok else "failed", result, reason)
            if cmd is None or not cmd["session_id"]:
                return cmd
            await self._apply_outcome(cursor, cmd, ok, result or {}, reason)
            return cmd

        cmd = await self.db.transaction(work)
        if cmd is not None and cmd["session_id"]:
            self.publish(cmd["session_id"])

    async def _apply_outcome(self, cursor, cmd: dict, ok: bool, result: dict,
                             reason: str | None) -> None:
        outcome = OUTCOMES.get(cmd["command_type"])
        if outcome is None:
            return
        success_state, failure_state, _ = outcome
        sid = cmd["session_id"]
        if ok:
            if success_state == states.RUNNING:
                if cmd["command_type"] == "start_session":
                    # a completion may overtake its ack; pass through `starting` (a no-op
                    # when the session is already there)
                    await fleet.move_session(cursor, sid, states.STARTING,
                                             message="the agent is starting the session")
                # from `unreachable` too: the agent came back and finished the job
                await fleet.move_session(cursor, sid, states.RUNNING,
                                         message="the session is running")
            else:
                await fleet.move_session(cursor, sid, success_state,
                                         message=f"the session is {success_state}")
        else:
            text = reason or "the agent reported a failure"
            if failure_state == states.FAILED:
                await fleet.move_session(cursor, sid, states.FAILED, error=text)
            else:
                await fleet.move_session(cursor, sid, failure_state,
                                         message=f"{cmd['command_type']} failed: {text}")

    async def session_status(self, agent_uuid: str, session_id: str, state: str,
                             reason: str) -> None:
        """An unsolicited report: the session stopped or failed on its own."""
        if state == "running":
            return

        async def work(cursor):
            rows = await fetch_all(cursor, "SELECT state FROM sessions WHERE id = %s AND "
                                   "agent_id = %s FOR UPDATE", (session_id, agent_uuid))
            if not rows or rows[0][0] not in (states.RUNNING, states.STARTING, states.WAKING,
                                              states.UNREACHABLE):
                return False  # an expected stop (hibernate, terminate) or not ours
            return await fleet.move_session(
                cursor, session_id, states.FAILED,
                error=reason or f"the session {state} on its agent")

        if await self.db.transaction(work):
            self.publish(session_id)

    async def session_progress(self, agent_uuid: str, session_id: str, message: str) -> None:
        """Progress from the driver (pulling an image, scheduled...): an event, no move."""
        if await fleet.add_progress_event(self.db, session_id, agent_uuid, message):
            self.publish(session_id)

    async def agent_registered(self, agent_uuid: str, reported: list) -> None:
        """Reconcile what the agent says it runs with what the database believes."""
        running = {}
        for item in reported:
            if isinstance(item, dict) and item.get("session_id"):
                running[str(item["session_id"])] = item
        changed: list[str] = []

        async def work(cursor):
            rows = await fetch_all(
                cursor,
                "SELECT s.id, s.state, EXISTS (SELECT 1 FROM agent_commands c WHERE "
                "c.session_id = s.id AND c.status = ANY(%s)) FROM sessions s "
                "WHERE s.agent_id = %s AND s.state <> 'terminated' FOR UPDATE OF s",
                (list(fleet.IN_FLIGHT), agent_uuid))
            known = set()
            for sid, state, busy in rows:
                sid = str(sid)
                known.add(sid)
                if sid in running:
                    if state == states.UNREACHABLE and not busy:
                        await fleet.move_session(
                            cursor, sid, states.RUNNING, message="the agent reconnected")
                        changed.append(sid)
                    elif state in (states.TERMINATED, states.FAILED, states.HIBERNATED):
                        await self._queue(cursor, agent_uuid, {"id": sid}, "stop_session", {})
                elif state in (states.RUNNING, states.UNREACHABLE) and not busy:
                    await fleet.move_session(
                        cursor, sid, states.FAILED,
                        error="the agent no longer runs this session (it restarted)")
                    changed.append(sid)
            orphans = [sid for sid in running if sid not in known]
            for sid in orphans:
                await fleet.enqueue(cursor, agent_uuid, None, "stop_session",
                                    {"session_id": sid, "reason": "unknown to the control plane"},
                                    self.command_timeout)

        await self.db.transaction(work)
        self.publish_many(changed)

    # -- deadlines ------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        self._sweeping = self._sweeper.start(interval, now=True)

    def stop(self) -> defer.Deferred:
        """Stop sweeping; fires once a sweep in progress has finished with the database."""
        if not self._sweeper.running:
            return defer.succeed(None)
        self._sweeper.stop()
        return self._sweeping

    def _sweep(self) -> defer.Deferred:
        d = defer.Deferred.fromCoroutine(self.sweep())
        d.addErrback(lambda f: log.warn("lifecycle sweep failed: {e}", e=f.getErrorMessage()))
        return d

    async def sweep(self) -> None:
        """Commands past their deadline become `timeout`; stuck sessions fail with a reason."""
        changed: list[str] = []

        async def expire(cursor):
            for cmd in await fleet.expire(cursor):
                outcome = OUTCOMES.get(cmd["command_type"])
                if not cmd["session_id"] or outcome is None:
                    continue
                message = f"{outcome[2]} within {self.command_timeout:.0f}s (command timed out)"
                if outcome[1] == states.FAILED:
                    moved = await fleet.move_session(cursor, cmd["session_id"], states.FAILED,
                                                     error=message)
                else:
                    moved = await fleet.move_session(cursor, cmd["session_id"], outcome[1],
                                                     message=message)
                if moved:
                    changed.append(cmd["session_id"])

        await self.db.transaction(expire)
        for sid in await fleet.unscheduled_sessions(self.db, RESCHEDULE_AFTER):
            await self.session_created(sid)  # idempotent: only a `pending` session moves
        for sid, state in await fleet.stuck_sessions(self.db, states.TRANSITIONAL_TIMEOUTS):
            async def fail(cursor, sid=sid, state=state):
                return await fleet.move_session(
                    cursor, sid, states.FAILED,
                    error=f"the session stayed `{state}` longer than "
                          f"{states.TRANSITIONAL_TIMEOUTS[state]:.0f}s")

            if await self.db.transaction(fail):
                changed.append(sid)
        self.publish_many(changed)
        for sid in await fleet.idle_sessions(self.db, self.idle_timeout):
            await self.hibernate_idle(sid)

    async def hibernate_idle(self, session_id: str) -> None:
        """No keyboard or mouse input for its idle timeout: hibernate through the queue."""
        async def move(cursor):
            return await fleet.move_session(cursor, session_id, states.HIBERNATING,
                                            message="idle: hibernating")

        if await self.db.transaction(move):
            log.info("session {session_id} idle: hibernating", session_id=session_id)
            await self.state_requested(session_id, states.HIBERNATING)
