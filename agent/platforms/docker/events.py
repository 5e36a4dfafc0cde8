"""The engine's `/events` stream for this agent's containers, kept open for the driver.

The stream is opened with a label filter (this agent's containers only); each event goes
to `on_event`. If it ends (the engine restarted, the socket broke) it is opened again with
capped backoff, and `on_reconnect` runs once it is back, so the driver can look again at
what it may have missed. A stream that stays silent is fine: the engine sends nothing
when nothing happens (a dead peer is noticed by the reconnect after TCP gives up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from agent.backoff import capped_backoff
from agent.platforms.docker.engine import EngineClient, EngineError

log = Logger()


class EventWatcher:
    def __init__(self, reactor, client: EngineClient, filters: dict[str, list[str]],
                 on_event: Callable[[dict[str, Any]], None],
                 on_reconnect: Callable[[], Any] | None = None,
                 delay: Callable[[int], float] | None = None) -> None:
        self.reactor = reactor
        self.client = client
        self.filters = filters
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.delay = delay or capped_backoff(initial=0.2, cap=5.0)
        self.connected = False
        self._stopping = False
        self._current: defer.Deferred | None = None
        self._pause: defer.Deferred | None = None
        self._first: defer.Deferred | None = None
        self._loop: defer.Deferred | None = None

    def start(self) -> defer.Deferred[None]:
        """Fires once the stream is open (events from then on are delivered)."""
        first: defer.Deferred[None] = defer.Deferred()
        self._first = first
        self._loop = defer.ensureDeferred(self._run(first))
        self._loop.addErrback(lambda f: log.failure("the Docker events watcher stopped", f))
        return first

    def _deliver(self, event: Any) -> None:
        if isinstance(event, dict) and event.get("Type", "container") == "container":
            self.on_event(event)

    async def _run(self, first: defer.Deferred) -> None:
        attempt = 0
        while not self._stopping:
            def opened() -> None:
                nonlocal attempt
                self.connected, attempt = True, 0
                if not first.called:
                    first.callback(None)
                elif self.on_reconnect is not None:
                    defer.maybeDeferred(self.on_reconnect).addErrback(
                        lambda f: log.failure("resynchronising after the events stream", f))

            self._current = defer.ensureDeferred(self.client.stream(
                "GET", "/events", self._deliver, params={"filters": self.filters},
                opened=opened))
            try:
                await self._current
                problem = "the engine ended the stream"
            except defer.CancelledError:
                problem = "cancelled"
            except EngineError as e:
                problem = e.message
            finally:
                self.connected, self._current = False, None
            if self._stopping:
                return
            attempt += 1
            log.warn("the Docker events stream is closed ({problem}); reopening",
                     problem=problem)
            self._pause = deferLater(self.reactor, self.delay(attempt), lambda: None)
            try:
                await self._pause
            except defer.CancelledError:
                return
            finally:
                self._pause = None

    def stop(self) -> defer.Deferred[None]:
        self._stopping = True
        for pending in (self._current, self._pause):
            if pending is not None:
                pending.cancel()
        if self._first is not None and not self._first.called:
            self._first.errback(defer.CancelledError("the events watcher was stopped"))
        return self._loop if self._loop is not None else defer.succeed(None)
