"""A MultiService that stops its children one at a time, newest first.

Twisted's MultiService stops every child at once; here the database must outlive the
services still writing to it on their way out (agents marked offline, audit rows, tunnel
records), so each child's stop is awaited before the next one starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

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
    Ctrl-C) is noted; it neither stops the reactor twice (a traceback) nor cuts the
    ordered stop short. A third one is meant: the process exits at once (its children get
    their death signal from the kernel, so none is left behind)."""

    def __init__(self, reactor, exit: Callable[[int], None] = os._exit) -> None:
        self.reactor = reactor
        self.stopping = False
        self._extra = 0
        self._exit = exit

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
            self._extra += 1
            if self._extra == 1:
                log.info("already stopping (the local agent, then the database); please "
                         "wait, or press Ctrl-C once more to exit at once")
            else:
                log.warn("exiting at once, without an ordered stop (signal {n} again)",
                         n=number)
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                self._exit(128 + number)
            return
        self.stopping = True
        handler = self.reactor.sigInt if number == signal.SIGINT else self.reactor.sigTerm
        handler(number, frame)
