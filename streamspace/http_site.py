"""The control plane's twisted.web Site: bounded request bodies, requests counted under
their route template, idle connections closed on shutdown."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from twisted.web.server import Site

from streamspace import metrics
from streamspace.request_limits import BoundedRequest


class ControlPlaneSite(Site):
    """Counts every finished request under its route template, not its path, and its
    method normalised to a fixed set, so the label set stays bounded whatever clients
    send."""

    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(self, resource, route_of: Callable[[str, str], str], **kwargs) -> None:
        super().__init__(resource, **kwargs)
        self._route_of = route_of
        self._channels: weakref.WeakSet = weakref.WeakSet()
        metrics.use_route_resolver(route_of)

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        self._channels.add(channel)
        return channel

    def close_connections(self) -> None:
        """Drop idle keep-alive HTTP connections on shutdown (a WebSocket has taken its
        transport away from the channel and is closed by its own service)."""
        for channel in list(self._channels):
            inner = getattr(channel, "_channel", channel)  # twisted wraps HTTP/1.1 and h2
            transport = getattr(inner, "transport", None)
            if transport is not None:
                transport.loseConnection()

    def log(self, request) -> None:
        path = request.path.decode("latin-1") if request.path else "/"
        method = request.method.decode("latin-1") if request.method else "?"
        metrics.http_request(self._route_of(path, method), method, request.code)
