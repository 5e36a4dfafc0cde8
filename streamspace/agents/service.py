"""The fleet as a Twisted service: hub and lifecycle timers run once the database is ready."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from streamspace.agents.hub import AgentHub
from streamspace.agents.ws import agent_connect_endpoint
from streamspace.db import fleet
from streamspace.db.service import DatabaseService
from streamspace.sessions.lifecycle import SessionLifecycle

log = Logger()


class FleetService(Service):
    name = "fleet"

    def __init__(self, database: DatabaseService, hub: AgentHub,
                 lifecycle: SessionLifecycle, sweep_interval: float = 1.0) -> None:
        self.database = database
        self.hub = hub
        self.lifecycle = lifecycle
        self.sweep_interval = sweep_interval
        self.proxy = None  # the VNC proxy, when wired: its idle sweeper runs with the fleet
        self._started = False

    def startService(self) -> None:
        super().startService()
        self.database.ready.addCallback(self._database_ready)

    def _database_ready(self, db):
        async def go():
            # no connection is live in a process that just started, whatever the table says
            await fleet.all_offline(db)
            self.hub.accepting = True
            if self.running:
                self.hub.start(self.sweep_interval)
                self.lifecycle.start(self.sweep_interval)
                if self.proxy is not None:
                    self.proxy.start()
                self._started = True

        d = defer.Deferred.fromCoroutine(go())
        d.addErrback(lambda f: log.failure("fleet start-up failed", f))
        return db

    def stopService(self):
        super().stopService()
        self.hub.accepting = False
        if self.proxy is not None:
            self.proxy.stop()
        return defer.gatherResults([self.lifecycle.stop(), self.hub.stop()])


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
