"""The database as a Twisted service: embedded cluster, pool, migrations, start-up hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from streamspace.db import migrations
from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.pool import Database, DatabaseUnavailable

log = Logger()

CONNECT_RETRY_MAX = 5.0
StartupHook = Callable[[Database], Awaitable[None]]


class DatabaseService(Service):
    """Brings the database up in the background; the web server answers meanwhile.

    Connection failures are retried with capped backoff (the database may start after us);
    a schema the code cannot run against is fatal: `on_fatal` is called with the reason.
    """

    name = "database"

    def __init__(self, reactor, dsn: str | None, pool_size: int, *, migrate: bool,
                 embedded: EmbeddedPostgres | None = None,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.reactor = reactor
        self.migrate = migrate
        self.embedded = embedded
        self.on_fatal = on_fatal or (lambda reason: None)
        # Created now so request handlers can hold it; it answers DatabaseUnavailable
        # (-> 503) until `start()` has connected it.
        self.db = Database(dsn or "", pool_size, reactor)
        self.schema_current = False
        self.hooks: list[StartupHook] = []
        # Read once: /ready compares against these on every probe, and reading the schema
        # files there would be disk I/O on the reactor thread per request.
        self.migrations = migrations.load_migrations()
        self.ready: defer.Deferred = defer.Deferred()
        self._starting: defer.Deferred | None = None
        self._stopping = False

    def add_startup_hook(self, hook: StartupHook) -> None:
        """Run `hook(db)` once the schema is current (e.g. create the admin, load templates)."""
        self.hooks.append(hook)

    def startService(self) -> None:
        super().startService()
        self._starting = defer.Deferred.fromCoroutine(self._bring_up())
        self._starting.addErrback(self._fatal)

    def _fatal(self, failure) -> None:
        if self._stopping:
            return
        reason = failure.getErrorMessage()
        log.critical("cannot start: {reason}", reason=reason)
        self.on_fatal(reason)

    async def _bring_up(self) -> None:
        if self.embedded is not None:
            self.db.dsn = await self.embedded.start()
        delay = 0.2
        while not self._stopping:
            try:
                await self.db.start()
                break
            except DatabaseUnavailable as e:
                log.warn("database unreachable ({reason}); retrying in {delay:.1f}s",
                         reason=str(e).splitlines()[0] if str(e) else "no reason", delay=delay)
                await deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, CONNECT_RETRY_MAX)
        if self._stopping:
            return
        state = await migrations.status(self.db, self.migrations)
        if state.unknown or state.modified:
            raise migrations.MigrationError(state.problem())
        if state.pending:
            if not self.migrate:
                raise migrations.MigrationError(state.problem())
            applied = await migrations.migrate(self.db, self.migrations)
            if applied:
                log.info("applied migrations {versions}",
                         versions=", ".join(f"{v:04d}" for v in applied))
        self.schema_current = True
        for hook in self.hooks:
            await hook(self.db)
        log.info("database ready")
        self.ready.callback(self.db)

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): reachable and migrations current, checked against the database."""
        if not self.db.started:
            return False, "database not connected"
        try:
            state = await migrations.status(self.db, self.migrations)
        except DatabaseUnavailable as e:
            return False, f"database unreachable: {e}"
        except Exception as e:  # e.g. a half-dropped schema: still an answer, not a 500
            return False, f"database check failed: {e}"
        problem = state.problem()
        if problem:
            return False, problem
        if not self.ready.called:
            return False, "start-up in progress"
        return True, "ok"

    async def _stop(self) -> None:
        self._stopping = True
        self.db.close()
        if self.embedded is not None:
            await self.embedded.stop()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())
