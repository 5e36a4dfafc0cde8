"""The fleet as a Twisted service: hub and lifecycle timers run once the database is ready.

Start-up marks every agent offline (no connection is live in a process that just
started, whatever the table says) before the hub admits anyone. If that fails (the
database went away again, a bug), it is retried with capped backoff, and `/ready` says
503 with the reason until it has succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from streamspace.agents.hub import AgentHub
from streamspace.agents.ws import agent_connect_endpoint
from streamspace.db.service import DatabaseService
from streamspace.sessions.lifecycle import SessionLifecycle

log = Logger()

STARTUP_RETRY_MAX = 10.0


class FleetService(Service):
    name = "fleet"

    def __init__(self, database: DatabaseService, hub: AgentHub,
                 lifecycle: SessionLifecycle, sweep_interval: float = 1.0) -> None:
        self.database = database
        self.hub = hub
        self.lifecycle = lifecycle
        self.sweep_interval = sweep_interval
        self.proxy = None  # the VNC proxy, when wired: its idle sweeper runs with the fleet
        self.started = False
        self.problem = "waiting for the database"
        self._starting: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self.database.ready.addCallback(self._database_ready)

    def _database_ready(self, db):
        self._starting = defer.Deferred.fromCoroutine(self._start_up())
        return db

    async def _start_up(self) -> None:
        delay = 0.5
        while self.running:
            try:
                await self.lifecycle.all_offline("control plane restarted")
                break
            except Exception as e:
                self.problem = f"fleet start-up failed ({e}); retrying"
                log.warn("fleet start-up failed: {e}; retrying in {d:.1f}s", e=str(e), d=delay)
                await deferLater(self.hub.reactor, delay, lambda: None)
                delay = min(delay * 2, STARTUP_RETRY_MAX)
        if not self.running:
            return
        self.hub.accepting = True
        self.hub.start(self.sweep_interval)
        self.lifecycle.start(self.sweep_interval)
        if self.proxy is not None:
            self.proxy.start()
        self.started = True
        self.problem = ""
        log.info("fleet started: agents are admitted")

    async def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, self.problem
        return True, "ok"

    def stopService(self):
        super().stopService()
        self.hub.accepting = False
        if self.proxy is not None:
            self.proxy.stop()
        if not self.started:
            return None
        return defer.gatherResults([self.lifecycle.stop(), self.hub.stop()])


class Readiness:
    """What `/ready` asks: the database first, then the fleet's start-up."""

    def __init__(self, *parts) -> None:
        self.parts = parts

    async def readiness(self) -> tuple[bool, str]:
        for part in self.parts:
            ok, reason = await part.readiness()
            if not ok:
                return ok, reason
        return True, "ok"


@dataclass
class Fleet:
    service: FleetService
    hub: AgentHub
    lifecycle: SessionLifecycle

    def websockets(self) -> dict:
        return {"agent_connect": agent_connect_endpoint(self.hub)}


def build_fleet(reactor, database: DatabaseService, *, heartbeat_timeout: float,
                command_timeout: float, heartbeat_interval: float = 10.0,
                sweep_interval: float = 1.0) -> Fleet:
    hub = AgentHub(reactor, database.db, heartbeat_timeout, heartbeat_interval)
    lifecycle = SessionLifecycle(reactor, database.db, hub, command_timeout)
    hub.lifecycle = lifecycle
    return Fleet(FleetService(database, hub, lifecycle, sweep_interval), hub, lifecycle)
