"""GET /api/v1/openapi.json: the OpenAPI 3.1 description of every route.

Request bodies are generated from the same `Field` tables the handlers validate with, so
the document cannot drift from the checks; response schemas are written out here and the
test suite validates every response it receives against them.
"""

from __future__ import annotations

import copy
from typing import Any

from streamspace.api.body import Field
from streamspace.sessions.states import ALL_STATES

JSON = "application/json"
ISO = {"type": "string", "format": "date-time"}
ISO_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
UUID = {"type": "string", "format": "uuid"}


def _obj(properties: dict[str, Any], *, required: list[str] | None = None,
         extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": extra}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def field_schema(field: Field) -> dict[str, Any]:
    kinds = {"string": "string", "integer": "integer", "number": "number",
             "boolean": "boolean", "object": "object", "string_map": "object"}
    schema: dict[str, Any] = {"type": kinds[field.kind]}
    if field.nullable:
        schema["type"] = [schema["type"], "null"]
    if field.kind == "string_map":
        schema["additionalProperties"] = {"type": "string"}
    for attr, key in (("min_len", "minLength"), ("max_len", "maxLength"),
                      ("min", "minimum"), ("max", "maximum")):
        value = getattr(field, attr)
        if value is not None:
            if field.kind in ("object", "string_map") and attr == "max_len":
                key = "maxProperties"
            schema[key] = value
    if field.pattern is not None:
        schema["pattern"] = f"^(?:{field.pattern})$"
    if field.choices is not None:
        schema["enum"] = list(field.choices)
    return schema


def body_schema(fields: dict[str, Field], *, partial: bool = False) -> dict[str, Any]:
    required = [] if partial else [n for n, f in fields.items() if f.required]
    schema = _obj({n: field_schema(f) for n, f in fields.items()}, required=required)
    if partial:
        schema["minProperties"] = 1
    return schema


USER = _obj({
    "id": UUID, "username": {"type": "string"}, "role": {"enum": ["admin", "user"]},
    "display_name": {"type": "string"}, "email": {"type": "string"},
    "disabled": {"type": "boolean"}, "max_sessions": {"type": ["integer", "null"]},
    "created_at": ISO, "updated_at": ISO,
})
ME = copy.deepcopy(USER)
ME["properties"]["session_limit"] = {"type": "integer",
                                     "description": "the concurrent-session limit in force"}
ME["required"].append("session_limit")

TEMPLATE = _obj({
    "id": UUID, "name": {"type": "string"}, "display_name": {"type": "string"},
    "description": {"type": "string"}, "icon": {"type": "string"},
    "category": {"type": "string"}, "vnc_port": {"type": "integer"},
    "cpu": {"type": "number"}, "memory_mb": {"type": "integer"},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "persistent_home": {"type": "boolean"},
    "idle_timeout_seconds": {"type": ["integer", "null"]},
    "platforms": {"type": "object", "additionalProperties": {"type": "object"},
                  "description": "per-platform settings, e.g. "
                                 "{\"kubernetes\": {\"image\": ...}, "
                                 "\"local\": {\"command\": ...}}"},
    "enabled": {"type": "boolean"}, "created_at": ISO, "updated_at": ISO,
})

NULLABLE_STRING = {"type": ["string", "null"]}
SESSION = _obj({
    "id": UUID, "name": {"type": "string"}, "owner": {"type": "string"}, "user_id": UUID,
    "template": {"type": "string"}, "state": {"enum": list(ALL_STATES)},
    "error": NULLABLE_STRING,
    "agent_id": {**NULLABLE_STRING, "description": "the agent's id (its text agent_id)"},
    "platform": NULLABLE_STRING, "region": NULLABLE_STRING,
    "requested_platform": NULLABLE_STRING, "requested_region": NULLABLE_STRING,
    "created_at": ISO, "updated_at": ISO, "last_activity": ISO, "state_changed_at": ISO,
    "viewer_url": {"type": "string", "description": "the noVNC viewer page for this session"},
})
SESSION_EVENT = _obj({"state": {"type": "string"}, "message": {"type": "string"},
                      "created_at": ISO})

AGENT = _obj({
    "id": UUID, "agent_id": {"type": "string"}, "platform": {"type": "string"},
    "region": {"type": "string"}, "status": {"enum": ["online", "offline"]},
    "capacity": {"type": "object"}, "metadata": {"type": "object"},
    "protocol_version": {"type": ["integer", "null"]}, "last_heartbeat": ISO_OR_NULL,
    "active_sessions": {"type": "integer"}, "created_at": ISO, "updated_at": ISO,
})
AGENT_WITH_TOKEN = copy.deepcopy(AGENT)
AGENT_WITH_TOKEN["properties"]["token"] = {
    "type": "string", "description": "the agent's token; shown only in this response"}
TWISTD = {"type": "string", "description": "path of the control plane's own `twistd` (the "
          "start command the UI shows runs it)"}
AGENT_WITH_TOKEN["properties"]["twistd"] = TWISTD
AGENT_WITH_TOKEN["required"] += ["token", "twistd"]

AUDIT_ENTRY = _obj({
    "id": {"type": "integer"}, "created_at": ISO, "actor_id": {"type": ["string", "null"]},
    "actor_name": {"type": "string"}, "action": {"type": "string"},
    "target_type": {"type": "string"}, "target_id": {"type": "string"},
    "client_addr": {"type": "string"}, "success": {"type": "boolean"},
    "details": {"type": "object"},
})


def _schemas() -> dict[str, Any]:
    from streamspace.api import agents, auth_routes, sessions, templates, users

    return {
        "Error": _obj({"error": _obj({"code": {"type": "string"},
                                      "message": {"type": "string"}})}),
        "User": USER, "Me": ME,
        "LoginRequest": body_schema(auth_routes.LOGIN_FIELDS),
        "PasswordChange": body_schema(auth_routes.PASSWORD_FIELDS),
        "TokenResponse": _obj({"token": {"type": "string"}, "token_type": {"const": "Bearer"},
                               "expires_at": ISO, "user": _ref("User")}),
        "UserCreate": body_schema(users.CREATE_FIELDS),
        "UserUpdate": body_schema(users.UPDATE_FIELDS, partial=True),
        "Template": TEMPLATE,
        "TemplateCreate": body_schema(templates.CREATE_FIELDS),
        "TemplateUpdate": body_schema(templates.UPDATE_FIELDS, partial=True),
        "Session": SESSION, "SessionEvent": SESSION_EVENT,
        "SessionCreate": body_schema(sessions.CREATE_FIELDS),
        "SessionUpdate": body_schema(sessions.UPDATE_FIELDS),
        "Agent": AGENT, "AgentWithToken": AGENT_WITH_TOKEN,
        "AgentToken": _obj({"agent_id": {"type": "string"}, "token": {"type": "string"},
                            "twistd": TWISTD}),
        "AgentCreate": body_schema(agents.CREATE_FIELDS),
        "AgentRegister": body_schema(agents.REGISTER_FIELDS),
        "AuditEntry": AUDIT_ENTRY,
        "AuditPage": _obj({"entries": {"type": "array", "items": _ref("AuditEntry")},
                           "next_cursor": {"type": ["string", "null"],
                                           "description": "pass as `cursor` for the next "
                                                          "page; null on the last page"}}),
    }


ERRORS = {
    400: "invalid input (malformed JSON, unknown field, wrong type: the message names it)",
    401: "missing, invalid, expired or revoked token",
    403: "the caller's role does not allow this",
    404: "no such resource (also another user's session)",
    409: "conflicts with the current state (the message says why)",
    413: "the body is larger than 64 KiB",
    415: "the body is not JSON",
    429: "too many failed attempts (see Retry-After)",
    503: "the database is unavailable",
}


def _op(summary: str, ok: int | None, schema: dict | None, *, auth: str | None = "bearer",
        body: str | None = None, errors: tuple[int, ...] = (), params: list | None = None,
        ok_description: str = "success", description: str | None = None,
        also: dict[int, str] | None = None, content_type: str = JSON) -> dict[str, Any]:
    responses: dict[str, Any] = {str(code): {"description": text}
                                 for code, text in (also or {}).items()}
    if ok is not None:
        responses[str(ok)] = {"description": ok_description}
        if schema is not None:
            responses[str(ok)]["content"] = {JSON: {"schema": schema}}
        elif content_type != JSON:
            responses[str(ok)]["content"] = {content_type: {"schema": {"type": "string"}}}
    codes = set(errors) | {503}
    if auth is not None:
        codes.add(401)
    if body is not None:
        codes |= {400, 413, 415}
    for code in sorted(codes):
        responses[str(code)] = {"description": ERRORS[code],
                                "content": {JSON: {"schema": _ref("Error")}}}
    responses["default"] = {"description": "error",
                            "content": {JSON: {"schema": _ref("Error")}}}
    op: dict[str, Any] = {"summary": summary, "responses": responses,
                          "security": [{"bearerAuth": []}] if auth == "bearer" else
                          [{"agentToken": []}] if auth == "agent" else []}
    if description:
        op["description"] = description
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {JSON: {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _q(name: str, description: str, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


SESSION_ID = _path("session_id", "the session's id (UUID)")
USER_ID = _path("user_id", "the user's id (UUID)")
TEMPLATE_NAME = _path("name", "the template's name (slug)")
AGENT_ID = _path("agent_id", "the agent's id (its text agent_id)")
BOOL = {"type": "string", "enum": ["true", "false"]}


def _paths() -> dict[str, Any]:
    return {
        "/auth/login": {"post": _op(
            "Log in; returns a JWT for `Authorization: Bearer`", 200, _ref("TokenResponse"),
            auth=None, body="LoginRequest", errors=(401, 403, 429),
            description="Failed attempts are limited per client address and username, "
                        "under a higher ceiling per address (429 with Retry-After; the "
                        "first refusal per limit and minute is audited); unknown users "
                        "and wrong passwords fail alike.")},
        "/auth/refresh": {"post": _op(
            "Exchange a valid token for a fresh one (the old one is revoked)", 200,
            _ref("TokenResponse"))},
        "/auth/logout": {"post": _op("Revoke the token used for this request", 204, None,
                                     ok_description="revoked")},
        "/auth/me": {"get": _op("The calling user", 200, _ref("Me"))},
        "/auth/password": {"post": _op(
            "Change your own password; every older token stops working, a new token is "
            "returned", 200, _ref("TokenResponse"), body="PasswordChange",
            errors=(403, 429))},
        "/users": {
            "get": _op("List users (admin)", 200, _list("User"), errors=(400, 403), params=[
                _q("role", "only this role", {"enum": ["admin", "user"]}),
                _q("disabled", "only disabled (true) or enabled (false) accounts", BOOL)]),
            "post": _op("Create a user (admin)", 201, _ref("User"), body="UserCreate",
                        errors=(403, 409)),
        },
        "/users/{user_id}": {
            "parameters": [USER_ID],
            "get": _op("A user (admin)", 200, _ref("User"), errors=(403, 404)),
            "patch": _op("Change a user (admin); a new password or disabling ends the "
                         "user's tokens", 200, _ref("User"), body="UserUpdate",
                         errors=(403, 404, 409)),
            "delete": _op("Delete a user without sessions (admin)", 204, None,
                          errors=(403, 404, 409), ok_description="deleted"),
        },
        "/templates": {
            "get": _op("List templates (users see enabled ones only)", 200, _list("Template"),
                       errors=(400,), params=[
                           _q("category", "only this category"),
                           _q("enabled", "only enabled (true) or disabled (false)", BOOL)]),
            "post": _op("Create a template (admin)", 201, _ref("Template"),
                        body="TemplateCreate", errors=(403, 409)),
        },
        "/templates/{name}": {
            "parameters": [TEMPLATE_NAME],
            "get": _op("A template", 200, _ref("Template"), errors=(404,)),
            "patch": _op("Change a template (admin)", 200, _ref("Template"),
                         body="TemplateUpdate", errors=(403, 404)),
            "delete": _op("Delete a template no session uses (admin)", 204, None,
                          errors=(403, 404, 409), ok_description="deleted"),
        },
        "/sessions": {
            "get": _op(
                "List sessions: your own; admins see all", 200, _list("Session"),
                errors=(400,), params=[
                    _q("user", "owner's username (admins)"),
                    _q("state", "only this state (terminated ones are hidden otherwise)",
                       {"enum": list(ALL_STATES)}),
                    _q("agent_id", "only sessions on this agent"),
                    _q("platform", "only sessions on this platform"),
                    _q("include_terminated", "also list terminated sessions", BOOL)]),
            "post": _op(
                "Start a session from a template", 201, _ref("Session"), body="SessionCreate",
                errors=(403, 409),
                description="The session is created `pending` and started by an agent; "
                            "while no agent can take it, it stays `pending` (the reason is "
                            "in its events) until one can or its pending timeout passes. "
                            "409 `session_limit_reached` when the owner is at their "
                            "concurrent-session limit. `user` (the seed's owner field) "
                            "may name someone else only for admins."),
        },
        "/sessions/{session_id}": {
            "parameters": [SESSION_ID],
            "get": _op("A session", 200, _ref("Session"), errors=(404,)),
            "patch": _op(
                "Hibernate (`hibernated`), wake or restart (`running`) a session", 200,
                _ref("Session"), body="SessionUpdate", errors=(404, 409),
                description="A running session goes to `hibernating`; a hibernated one to "
                            "`waking` (409 `session_limit_reached` at the owner's limit, "
                            "409 `cannot_wake` when its agent is offline or full: it stays "
                            "`hibernated`); a stopped or failed one is restarted with the "
                            "same template on the same agent (same home): `pending`. "
                            "Other moves are 409 `invalid_state_transition`."),
            "delete": _op(
                "Delete a session", 202, _ref("Session"), errors=(404, 409),
                ok_description="deletion started (`terminating`), or done at once "
                               "(`terminated`) for a session that never reached an agent",
                also={204: "the session was already terminated"}),
        },
        "/sessions/{session_id}/events": {
            "parameters": [SESSION_ID],
            "get": _op("A session's progress as Server-Sent Events", 200, None,
                       errors=(404,), ok_description="text/event-stream: every progress "
                       "event (`event: state`, data {state, message, at}), then live ones, "
                       "ending at running, failed, stopped, hibernated or terminated",
                       content_type="text/event-stream"),
        },
        # Served by streamspace.sessions.routes (the VNC side):
        "/sessions/{session_id}/vnc-token": {
            "parameters": [SESSION_ID],
            "post": _op("A short-lived, session-scoped token for the VNC WebSocket", 200,
                        _obj({"token": {"type": "string"}, "expires_at": ISO,
                              "url": {"type": "string"}}), errors=(404, 409)),
        },
        # WebSockets (upgrade requests), specified in docs/protocol.md:
        "/vnc/{session_id}": {
            "parameters": [SESSION_ID],
            "get": _op("Browser VNC WebSocket (binary RFB), `?token=` from vnc-token", 101,
                       None, auth=None, errors=(401, 403, 404),
                       ok_description="Switching Protocols"),
        },
        "/agent/connect": {
            "get": _op("Agent control channel WebSocket (JSON frames)", 101, None,
                       auth="agent", errors=(400, 409),
                       ok_description="Switching Protocols",
                       params=[_q("agent_id", "the connecting agent's id")]),
        },
        "/agent/tunnel/{tunnel_id}": {
            "parameters": [_path("tunnel_id", "the tunnel id sent in vnc_connect")],
            "get": _op("Agent VNC tunnel WebSocket (binary), Bearer = one-time secret", 101,
                       None, auth=None, errors=(403,), ok_description="Switching Protocols"),
        },
        "/agents": {
            "get": _op("List agents (admin)", 200, _list("Agent"), errors=(400, 403), params=[
                _q("platform", "only this platform"),
                _q("status", "only this status", {"enum": ["online", "offline"]}),
                _q("region", "only this region")]),
            "post": _op("Create an agent record; its token is returned once (admin)", 201,
                        _ref("AgentWithToken"), body="AgentCreate", errors=(403, 409)),
        },
        "/agents/register": {"post": _op(
            "An agent describes itself, authenticated by its own token", 200,
            _ref("Agent"), auth="agent", body="AgentRegister")},
        "/agents/{agent_id}": {
            "parameters": [AGENT_ID],
            "get": _op("An agent (admin)", 200, _ref("Agent"), errors=(403, 404)),
            "delete": _op("Delete an agent that holds no sessions (admin)", 204, None,
                          errors=(403, 404, 409), ok_description="deleted"),
        },
        "/agents/{agent_id}/token": {
            "parameters": [AGENT_ID],
            "post": _op("Issue a new token for an agent; the old one stops working (admin)",
                        200, _ref("AgentToken"), errors=(403, 404)),
        },
        "/audit": {"get": _op(
            "The audit log, newest first (admin)", 200, _ref("AuditPage"), errors=(400, 403),
            params=[
                _q("action", "an action, or a prefix ending in `*` (e.g. `session.*`)"),
                _q("actor", "the actor's name"), _q("actor_id", "the actor's user id"),
                _q("target_type", "e.g. user, session, template, agent"),
                _q("target_id", "the target's id"),
                _q("success", "only successes (true) or failures (false)", BOOL),
                _q("since", "from this time (ISO 8601)", ISO),
                _q("until", "before this time (ISO 8601)", ISO),
                _q("limit", "entries per page (1-500, default 100)", {"type": "integer"}),
                _q("offset", "skip this many entries", {"type": "integer"}),
                _q("cursor", "`next_cursor` of the previous page")])},
        "/openapi.json": {"get": _op("This document", 200, {"type": "object"}, auth=None)},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "StreamSpace control plane API", "version": "1.0.0",
                 "description": "Every error is `{\"error\": {\"code\", \"message\"}}`. "
                                "Authenticate with `Authorization: Bearer <token>` from "
                                "`POST /auth/login`."},
        "servers": [{"url": "/api/v1"}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "agentToken": {"type": "http", "scheme": "bearer",
                               "description": "an agent's token from POST /agents"},
            },
        },
    }


_DOCUMENT: dict[str, Any] | None = None


async def serve(api, request):
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = document()
    return api.ok(request, _DOCUMENT)
