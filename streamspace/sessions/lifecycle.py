"""Session lifecycle: the domain's entry points, wired to the database and the agent hub.

User requests (`requests`, called by the API), agent reports (`reports`) and the periodic sweep (`sweeps`)
each change sessions in one transaction through the one write path (`moves`); this
class runs those transactions, then sends the commands they queued and tells listeners
(the SSE stream) which sessions changed. A command queued but not sent (the process
stopped after the commit, the agent was away) stays `pending` in the database and goes
out when the agent registers or the next sweep finds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from streamspace.db import fleet
from streamspace.db import sessions as session_rows
from streamspace.db.pool import Database
from streamspace.sessions import placement, reports
from streamspace.sessions.reports import Changes
from streamspace.sessions.states import FINAL_STATES
from streamspace.sessions.sweeps import REDELIVER_AFTER, Sweeper

log = Logger()


class SessionLifecycle:
    def __init__(self, reactor, db: Database, hub, command_timeout: float) -> None:
        self.reactor = reactor
        self.db = db
        self.hub = hub  # AgentHub: `deliver(agent_uuid, command)`, `connected(agent_uuid)`
        self.command_timeout = command_timeout
        self.listeners: list[Callable[[str], None]] = []
        self.sweeper = Sweeper(db, command_timeout)
        self._loop = task.LoopingCall(self._sweep)
        self._loop.clock = reactor
        self._sweep_failing = False

    @property
    def idle_timeout(self) -> float:
        return self.sweeper.idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float) -> None:
        self.sweeper.idle_timeout = seconds

    # -- after a commit: tell listeners, send commands -------------------------------------

    def publish(self, session_id: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(session_id)
            except Exception:
                log.failure("session listener failed")

    async def _apply(self, work: Callable[[Any], Awaitable[Changes]], *,
                     deliver: bool = True) -> Changes:
        changes = await self.db.transaction(work)
        await self.settle(changes, deliver=deliver)
        return changes

    async def settle(self, changes: Changes, *, deliver: bool = True) -> None:
        for sid in dict.fromkeys(changes.sessions):
            self.publish(sid)
        if deliver:
            for command in changes.commands:
                await self.hub.deliver(command["agent_id"], command)

    # -- after a user request (streamspace.sessions.requests) committed -----------------

    async def session_changed(self, session_id: str) -> None:
        """A request committed a change: place it if it is pending, send what it queued."""
        changes = Changes([session_id])

        async def work(cursor):
            placed = await placement.place(cursor, session_id, self.command_timeout)
            if placed is not None:
                changes.add(placed.moved)
            return changes

        await self.db.transaction(work)
        changes.commands += await fleet.undelivered(self.db, session_id=session_id)
        await self.settle(changes)

    # -- agent reports (the hub calls these, one frame at a time per agent) ---------------

    async def command_acked(self, agent_uuid: str, command_id: str) -> None:
        await self._apply(lambda cursor: reports.command_acked(cursor, agent_uuid, command_id))

    async def command_finished(self, agent_uuid: str, command_id: str, ok: bool,
                               reason: str | None) -> None:
        await self._apply(lambda cursor: reports.command_finished(
            cursor, agent_uuid, command_id, ok, reason))

    async def session_status(self, agent_uuid: str, session_id: str, state: str,
                             reason: str) -> None:
        await self._apply(lambda cursor: reports.session_status(
            cursor, agent_uuid, session_id, state, reason))

    async def session_progress(self, agent_uuid: str, session_id: str, message: str) -> None:
        """Progress from the driver (pulling an image, scheduled...): an event, no move."""
        if await session_rows.add_event_if_alive(self.db, session_id, agent_uuid, message,
                                                 FINAL_STATES):
            self.publish(session_id)

    async def agent_reported(self, agent_uuid: str, reported: dict[str, str], *,
                             registering: bool) -> None:
        """`register` or `heartbeat`: reconcile its session list with the database. (On
        `register` the hub sends every in-flight command next, these included.)"""
        await self._apply(lambda cursor: reports.reconcile(
            cursor, agent_uuid, reported, registering=registering,
            command_timeout=self.command_timeout), deliver=not registering)

    async def agent_offline(self, agent_uuid: str, conn_id: str | None, reason: str) -> None:
        await self._apply(lambda cursor: reports.agent_offline(cursor, agent_uuid, conn_id,
                                                               reason))

    async def all_offline(self, reason: str) -> None:
        """At start-up no connection is live, whatever the table says."""
        for agent_uuid in await fleet.online_agents(self.db):
            await self.agent_offline(agent_uuid, None, reason)

    # -- the sweep ------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        self._sweeping = self._loop.start(interval, now=True)

    def stop(self) -> defer.Deferred:
        """Stop sweeping; fires once a sweep in progress has finished with the database."""
        if not self._loop.running:
            return defer.succeed(None)
        self._loop.stop()
        return self._sweeping

    def _sweep(self) -> defer.Deferred:
        d = defer.Deferred.fromCoroutine(self.sweep())
        d.addCallbacks(self._sweep_ok, self._sweep_failed)
        return d

    def _sweep_ok(self, _) -> None:
        if self._sweep_failing:
            log.info("lifecycle sweep works again")
        self._sweep_failing = False

    def _sweep_failed(self, failure) -> None:
        if not self._sweep_failing:  # once per outage, not once a second
            log.warn("lifecycle sweep failed: {e}", e=failure.getErrorMessage())
        self._sweep_failing = True

    async def sweep(self) -> None:
        await self.settle(await self.sweeper.sweep())
        for command in await fleet.undelivered(self.db, older_than=REDELIVER_AFTER):
            if self.hub.connected(command["agent_id"]):
                await self.hub.deliver(command["agent_id"], command)
