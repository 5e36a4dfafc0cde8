"""A txpostgres connection pool that reconnects by itself.

Every pooled connection carries a `DeadConnectionDetector`: when PostgreSQL restarts,
queries on a dead connection fail fast (the API answers 503) while the detector
reconnects in the background with capped backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from txpostgres import reconnection, retrying, txpostgres

T = TypeVar("T")
log = Logger()

RECONNECT_MAX_DELAY = 2.0


class _Pool(txpostgres.ConnectionPool):
    """A pool whose connections reconnect by themselves until the pool is closed.

    It remembers every connection it made (the base class only tracks idle ones), so
    closing it also closes connections that are busy with a query at that moment.
    """

    def __init__(self, dsn: str, size: int, reactor) -> None:
        self.closed = False
        self.reactor = reactor
        self.connectionFactory = self._make_connection  # instance attribute: not bound twice
        super().__init__(None, dsn, min=size)
        self.every_connection = list(self.connections)

    def _delays(self):
        for delay in retrying.simpleBackoffIterator(
                initialDelay=0.2, maxDelay=RECONNECT_MAX_DELAY, factor=1.6, maxRetries=0,
                now=True):
            if self.closed:
                return
            yield delay

    def _make_connection(self, reactor, cooperator):
        detector = reconnection.DeadConnectionDetector(
            reconnectionIterator=self._delays, reactor=reactor)
        return txpostgres.Connection(reactor, cooperator, detector)

    def close(self) -> None:
        self.closed = True
        for c in self.every_connection:
            try:
                c.close()
            except Exception:
                pass


class DatabaseUnavailable(Exception):
    """The database cannot be reached right now (callers answer 503)."""


class Database:
    """The store interface the domain layer uses: queries and transactions, nothing else."""

    def __init__(self, dsn: str, size: int, reactor: IReactorTime) -> None:
        self.dsn = dsn
        self.size = size
        self.reactor = reactor
        self._pool: _Pool | None = None

    async def start(self) -> None:
        """Open every connection; fails (and closes what opened) if the database is down."""
        pool = _Pool(self.dsn, self.size, self.reactor)
        try:
            await pool.start()
        except Exception as e:
            pool.close()
            raise DatabaseUnavailable(_unwrap(e)) from None
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def pool_usage(self) -> dict[str, int] | None:
        """{"size", "busy", "waiting"} for the metrics (None while not connected)."""
        pool = self._pool
        if pool is None:
            return None
        busy = max(0, pool.min - len(pool.connections))
        return {"size": pool.min, "busy": busy, "waiting": len(pool._semaphore.waiting)}

    def _require(self) -> _Pool:
        if self._pool is None:
            raise DatabaseUnavailable("database not connected")
        return self._pool

    async def _call(self, method: str, *args: Any) -> Any:
        pool = self._require()
        try:
            return await getattr(pool, method)(*args)
        except reconnection.ConnectionDead as e:
            raise DatabaseUnavailable("database connection lost; reconnecting") from e
        except _psycopg_connection_errors() as e:
            raise DatabaseUnavailable(str(e).strip()) from e

    async def query(self, sql: str, params: Any = None) -> list[tuple]:
        return await self._call("runQuery", sql, params)

    async def execute(self, sql: str, params: Any = None) -> None:
        await self._call("runOperation", sql, params)

    async def transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run `await work(cursor)` in one transaction: committed if it returns, else rolled back."""

        def interaction(cursor):
            return defer.Deferred.fromCoroutine(work(cursor))

        return await self._call("runInteraction", interaction)


def _psycopg_connection_errors() -> tuple[type[BaseException], ...]:
    import psycopg2

    return (psycopg2.OperationalError, psycopg2.InterfaceError, txpostgres.RollbackFailed)


def _unwrap(e: BaseException) -> str:
    """DeferredList wraps the first failure; dig out the readable database message."""
    sub = getattr(e, "subFailure", None)
    if sub is not None:
        return str(sub.value).strip()
    return str(e).strip()


async def fetch_all(cursor, sql: str, params: Any = None) -> list[tuple]:
    await cursor.execute(sql, params)
    return cursor.fetchall()


async def fetch_one(cursor, sql: str, params: Any = None) -> tuple | None:
    await cursor.execute(sql, params)
    return cursor.fetchone()


def dsn_from_options(opts) -> str:
    """A libpq connection string from DATABASE_URL or the DB_* settings."""
    if opts["database_url"]:
        return opts["database_url"]
    parts = {
        "host": opts["db_host"],
        "port": opts["db_port"],
        "dbname": opts["db_name"],
        "user": opts["db_user"],
        "password": opts["db_password"],
    }
    return make_dsn(**parts)


def make_dsn(**parts: Any) -> str:
    def quote(v: Any) -> str:
        s = str(v)
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in parts.items() if v not in (None, ""))
