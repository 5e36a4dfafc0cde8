"""Prometheus metrics: process metrics plus an HTTP request counter by route and status."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest
from twisted.web.server import Site

HTTP_REQUESTS = Counter(
    "streamspace_http_requests_total",
    "HTTP requests served, by route template, method and status code",
    ["route", "method", "status"],
)


def render_latest() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsSite(Site):
    """A Site that counts every finished request under its route template, not its path,
    so the label set stays bounded whatever URLs clients send."""

    def __init__(self, resource, route_of: Callable[[str, str], str], **kwargs) -> None:
        super().__init__(resource, **kwargs)
        self._route_of = route_of
        self._channels: weakref.WeakSet = weakref.WeakSet()

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
        route = self._route_of(path, method)
        HTTP_REQUESTS.labels(route=route, method=method if route != "unmatched" else "other",
                             status=str(request.code)).inc()
