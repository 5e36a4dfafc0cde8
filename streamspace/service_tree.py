"""A MultiService that stops its children one at a time, newest first.

Twisted's MultiService stops every child at once; here the database must outlive the
services still writing to it on their way out (agents marked offline, audit rows, tunnel
records), so each child's stop is awaited before the next one starts.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class OrderedMultiService(MultiService):
    def stopService(self) -> defer.Deferred:
        self.running = 0

        async def stop_in_order() -> None:
            for child in reversed(list(self)):
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("error stopping {name}", name=getattr(child, "name", child))

        return defer.Deferred.fromCoroutine(stop_in_order())



class StopSignals:
    """SIGINT/SIGTERM start one ordered stop. Another one meanwhile (an impatient second
    Ctrl-C) is noted once; it neither stops the reactor twice (a traceback) nor cuts the
    ordered stop short."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.stopping = False
        self._noted = False

    def install(self) -> None:
        """After the reactor installed its own handlers (call when running)."""
        import signal

        signal.signal(signal.SIGINT, self.received)
        signal.signal(signal.SIGTERM, self.received)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def _shutting_down(self) -> None:
        self.stopping = True

    def received(self, number, frame=None) -> None:
        import signal

        if self.stopping:
            if not self._noted:
                self._noted = True
                log.info("already stopping (the local agent, then the database); please wait")
            return
        self.stopping = True
        handler = self.reactor.sigInt if number == signal.SIGINT else self.reactor.sigTerm
        handler(number, frame)
