"""The REST API's Klein app: one route table, one error handler, shared helpers.

Routes are relative to /api/v1 (ControlPlaneWeb mounts this resource there). Handlers
live in one module per resource as `async def handler(api, request, **params)`.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger

from streamspace.api import (
    agents,
    audit,
    auth_routes,
    errors,
    openapi,
    session_events,
    sessions,
    templates,
    users,
    vnc,
)
from streamspace.api import auth as api_auth
from streamspace.api.responses import json_body
from streamspace.auth.ratelimit import LoginRateLimiter
from streamspace.context import AppContext
from streamspace.db import audit as audit_db

log = Logger()

# (method, path relative to /api/v1, handler, endpoint name). openapi.py documents each.
ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", "/auth/login", auth_routes.login, "auth.login"),
    ("POST", "/auth/refresh", auth_routes.refresh, "auth.refresh"),
    ("POST", "/auth/logout", auth_routes.logout, "auth.logout"),
    ("GET", "/auth/me", auth_routes.me, "auth.me"),
    ("POST", "/auth/password", auth_routes.change_password, "auth.password"),
    ("GET", "/users", users.list_users, "users.list"),
    ("POST", "/users", users.create_user, "users.create"),
    ("GET", "/users/<user_id>", users.get_user, "users.get"),
    ("PATCH", "/users/<user_id>", users.update_user, "users.update"),
    ("DELETE", "/users/<user_id>", users.delete_user, "users.delete"),
    ("GET", "/templates", templates.list_templates, "templates.list"),
    ("POST", "/templates", templates.create_template, "templates.create"),
    ("GET", "/templates/<name>", templates.get_template, "templates.get"),
    ("PATCH", "/templates/<name>", templates.update_template, "templates.update"),
    ("DELETE", "/templates/<name>", templates.delete_template, "templates.delete"),
    ("GET", "/sessions", sessions.list_sessions, "sessions.list"),
    ("POST", "/sessions", sessions.create_session, "sessions.create"),
    ("GET", "/sessions/<session_id>", sessions.get_session, "sessions.get"),
    ("PATCH", "/sessions/<session_id>", sessions.update_session, "sessions.update"),
    ("DELETE", "/sessions/<session_id>", sessions.delete_session, "sessions.delete"),
    ("GET", "/sessions/<session_id>/events", session_events.stream, "sessions.events"),
    ("POST", "/sessions/<session_id>/vnc-token", vnc.issue_vnc_token, "sessions.vnc_token"),
    ("POST", "/agents/register", agents.register_agent, "agents.register"),
    ("GET", "/agents", agents.list_agents, "agents.list"),
    ("POST", "/agents", agents.create_agent, "agents.create"),
    ("GET", "/agents/<agent_id>", agents.get_agent, "agents.get"),
    ("DELETE", "/agents/<agent_id>", agents.delete_agent, "agents.delete"),
    ("POST", "/agents/<agent_id>/token", agents.rotate_token, "agents.token"),
    ("GET", "/audit", audit.list_audit, "audit.list"),
    ("GET", "/openapi.json", openapi.serve, "openapi"),
]


class Api:
    """The /api/v1 resource: holds the context every handler works with."""

    app = Klein()

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.login_limiter = LoginRateLimiter(ctx.reactor)

    # -- helpers handlers share ------------------------------------------------------

    async def principal(self, request) -> api_auth.Principal:
        return await api_auth.authenticate(self.ctx, request)

    async def admin(self, request) -> api_auth.Principal:
        return await api_auth.require_admin(self.ctx, request)

    def client_addr(self, request) -> str:
        return api_auth.client_addr(request, self.ctx.trusted_proxies)

    async def audit(self, cursor, request, principal: api_auth.Principal | None, action: str,
                    target_type: str, target_id: str | None, *, success: bool = True,
                    details: dict | None = None, actor_name: str | None = None) -> None:
        """Write an audit row on `cursor` (the transaction of the change it records)."""
        await audit_db.record(
            cursor, actor_id=principal.user_id if principal else None,
            actor_name=actor_name if actor_name is not None else
            (principal.username if principal else ""),
            action=action, target_type=target_type, target_id=target_id,
            client_addr=self.client_addr(request), success=success, details=details)

    async def notify(self, extra: str, method: str, *args: Any) -> None:
        """Tell a wired collaborator (`ctx.extras[extra]`, e.g. the session lifecycle or
        the agent hub) about a committed change. Its errors are logged, never turned
        into an API error: the change is already made."""
        target = self.ctx.extras.get(extra)
        if target is None:
            return
        try:
            await getattr(target, method)(*args)
        except Exception:
            log.failure("{extra}.{method} failed", extra=extra, method=method,
                        target_id=str(args[0]) if args else None)

    async def notify_lifecycle(self, method: str, *args: Any) -> None:
        await self.notify("lifecycle", method, *args)

    @staticmethod
    def ok(request, payload: Any, status: int = 200) -> bytes:
        return json_body(request, payload, status)

    @staticmethod
    def no_content(request) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"Cache-Control", b"no-store")
        return b""

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return errors.render(request, failure)


for _method, _path, _handler, _endpoint in ROUTES:
    Api.app.route(_path, methods=[_method], endpoint=_endpoint)(_handler)


def build_api(ctx: AppContext):
    """(resource to mount at /api/v1/, its werkzeug url map for metrics route labels)."""
    api = Api(ctx)
    return api.app.resource(), Api.app.url_map
