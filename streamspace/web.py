"""The HTTP surface: the Klein app for /health, /ready, /metrics, and the Site that serves it."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from streamspace.metrics import MetricsSite, render_latest

log = Logger()


def json_body(request, payload: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(payload, default=str).encode()


def error_body(request, status: int, code: str, message: str) -> bytes:
    """The one error shape every endpoint uses."""
    return json_body(request, {"error": {"code": code, "message": message}}, status)


class OpsRoutes:
    """Liveness, readiness and metrics: what orchestrators and Prometheus scrape."""

    app = Klein()

    def __init__(self, database) -> None:
        self.database = database

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return json_body(request, {"status": "healthy"})

    @app.route("/ready", methods=["GET"])
    async def ready(self, request):
        try:
            ok, reason = await self.database.readiness()
        except Exception as e:  # readiness must answer, whatever broke
            ok, reason = False, f"readiness check failed: {e}"
        if ok:
            return json_body(request, {"status": "ready"})
        return json_body(request, {"status": "not ready", "reason": reason}, 503)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        body, content_type = render_latest()
        request.setHeader(b"Content-Type", content_type.encode())
        return body

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure):
        e = failure.value
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.code, "http_error")
        return error_body(request, e.code, code, e.description or e.name)


def route_resolver(url_map: Map):
    """Map a request path to its route template for metrics labels."""

    adapter = url_map.bind("localhost")

    def route_of(path: str, method: str) -> str:
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
            return rule.rule
        except HTTPException:
            return "unmatched"
        except Exception:
            return "unmatched"

    return route_of


def make_site(root_app: Klein, resource) -> MetricsSite:
    site = MetricsSite(resource, route_resolver(root_app.url_map))
    site.displayTracebacks = False
    return site
