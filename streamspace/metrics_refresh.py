"""Refreshes the database-backed gauges on a timer, so a scrape never waits on a query."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from streamspace import metrics
from streamspace.db import stats
from streamspace.sessions.states import TERMINATED

log = Logger()

REFRESH_INTERVAL = 15.0


class FleetRefresher(Service):
    name = "metrics-refresh"

    def __init__(self, reactor, database, interval: float = REFRESH_INTERVAL,
                 states: tuple[str, ...] | None = None) -> None:
        self.reactor = reactor
        self.database = database
        self.interval = interval
        self.states = states or _session_states()
        self._loop = task.LoopingCall(self._refresh)
        self._loop.clock = reactor
        self._failing = False
        self._inflight: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self.database.ready.addCallback(self._database_ready)

    def _database_ready(self, db):
        if self.running and not self._loop.running:
            self._loop.start(self.interval, now=True)
        return db

    def _refresh(self) -> defer.Deferred:
        self._inflight = defer.Deferred.fromCoroutine(self.refresh_once())
        return self._inflight

    async def refresh_once(self) -> None:
        """Read the counts once; a failure keeps the last snapshot and is logged once."""
        try:
            snapshot = await stats.fleet_counts(self.database.db, self.states)
        except Exception as e:
            if not self._failing and self.running:
                log.warn("metrics: cannot read fleet counts ({e}); keeping the last values",
                         e=str(e).splitlines()[0] if str(e) else type(e).__name__)
            self._failing = True
            return
        self._failing = False
        metrics.FLEET.snapshot = {**snapshot, "at": self.reactor.seconds()}

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._inflight is not None and not self._inflight.called:
            return self._inflight  # the database must outlive the query in flight
        return None


def _session_states() -> tuple[str, ...]:
    from streamspace.sessions import states

    return tuple(s for s in states.ALL_STATES if s != TERMINATED)
