"""The HTTP surface: one Klein root composing ops routes, the REST API, WebSockets and UI.

Routing map (everything on one port):
  /health, /ready, /metrics              ops (this module)
  /api/v1/agent/connect                  agent hub WebSocket      (streamspace.agents)
  /api/v1/agent/tunnel/<tunnel_id>       agent tunnel WebSocket   (streamspace.relay)
  /api/v1/vnc/<session_id>               browser VNC WebSocket    (streamspace.relay)
  /api/v1/...                            REST API                 (streamspace.api)
  /...                                   static UI                (htdocs/)
"""

from __future__ import annotations

from collections.abc import Callable

from klein import Klein
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from streamspace.api import errors
from streamspace.api.errors import error_body
from streamspace.api.responses import json_body
from streamspace.http_site import ControlPlaneSite
from streamspace.metrics_endpoint import MetricsAccess

# `error_body` and `json_body` are also imported from here by the hub and the VNC proxy;
# both come from the one renderer (streamspace.api.errors / .responses).
__all__ = ["API_PREFIX", "ControlPlaneWeb", "error_body", "json_body", "make_site",
           "route_resolver"]

API_PREFIX = "/api/v1"


class ControlPlaneWeb:
    """The root resource. Sub-surfaces are plain resources handed in by `makeService`."""

    app = Klein()

    def __init__(self, database, api: IResource | None = None,
                 websockets: dict[str, Callable[..., IResource]] | None = None,
                 static: IResource | None = None,
                 metrics_access: MetricsAccess | None = None) -> None:
        self.database = database
        # Off unless configured (tap.py passes the operator's choice).
        self.metrics_access = metrics_access or MetricsAccess()
        self.api = api
        self.websockets = websockets or {}
        self.static = static

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
        return self.metrics_access.serve(request)

    def _websocket(self, name: str, request, **params):
        endpoint = self.websockets.get(name)
        if endpoint is None:
            return error_body(request, 404, "not_found", "this endpoint is not available")
        return endpoint(request, **params)

    @app.route(API_PREFIX + "/agent/connect")
    def agent_connect(self, request):
        return self._websocket("agent_connect", request)

    @app.route(API_PREFIX + "/agent/tunnel/<tunnel_id>")
    def agent_tunnel(self, request, tunnel_id):
        return self._websocket("agent_tunnel", request, tunnel_id=tunnel_id)

    @app.route(API_PREFIX + "/vnc/<session_id>")
    def vnc(self, request, session_id):
        return self._websocket("vnc", request, session_id=session_id)

    @app.route(API_PREFIX + "/", branch=True)
    def api_branch(self, request):
        if self.api is None:
            return error_body(request, 404, "not_found", "no such API endpoint")
        return self.api

    @app.route("/", branch=True)
    def static_branch(self, request):
        if self.static is None:
            return error_body(request, 404, "not_found", "not found")
        return self.static

    @app.handle_errors(Exception)
    def any_error(self, request, failure):
        """Whatever fails answers in the one JSON error shape, never an HTML traceback."""
        return errors.render(request, failure)


def route_resolver(root_map: Map, api_map: Map | None = None):
    """Map a request path to its route template (bounded metrics labels)."""

    root = root_map.bind("localhost")
    api = api_map.bind("localhost") if api_map is not None else None

    def route_of(path: str, method: str) -> str:
        try:
            if api is not None and path.startswith(API_PREFIX + "/"):
                try:
                    rule, _ = root.match(path, method=method, return_rule=True)
                    if "branch" not in rule.endpoint and "__rest__" not in rule.rule:
                        return rule.rule
                except HTTPException:
                    pass
                rule, _ = api.match(path[len(API_PREFIX):], method=method, return_rule=True)
                return API_PREFIX + rule.rule
            rule, _ = root.match(path, method=method, return_rule=True)
            if "__rest__" in rule.rule:
                return "static"
            return rule.rule
        except Exception:
            return "unmatched"

    return route_of


def make_site(web: ControlPlaneWeb, api_map: Map | None = None) -> ControlPlaneSite:
    return ControlPlaneSite(web.app.resource(), route_resolver(web.app.url_map, api_map))
