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
