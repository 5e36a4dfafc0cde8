"""The one error renderer: every failure, on every route, becomes
`{"error": {"code", "message"}}` with the right status.

Handlers raise `ApiError` (or let anything else escape); Klein error handlers call
`render`; code that answers outside Klein (WebSocket admission, the body-size guard that
runs before any handler) calls `error_body` or `error_payload`. Nothing else builds an
error body.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from streamspace.api.responses import json_body
from streamspace.db.pool import DatabaseUnavailable

log = Logger()


class ApiError(Exception):
    """Raised by handlers; rendered as {"error": {"code", "message"}} with `status`."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str = "this requires the admin role") -> ApiError:
    return ApiError(403, "forbidden", message)


def error_payload(code: str, message: str) -> bytes:
    """The error shape as bytes (for answers written before a request object exists)."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_body(request, status: int, code: str, message: str) -> bytes:
    """Set `request`'s status and JSON headers; return the error body to send."""
    return json_body(request, {"error": {"code": code, "message": message}}, status)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large"}


def render(request, failure) -> bytes:
    """The body for any failure raised while handling `request` (Klein error handler)."""
    e = failure.value
    if isinstance(e, ApiError):
        for name, value in e.headers.items():
            request.setHeader(name.encode(), value.encode())
        return error_body(request, e.status, e.code, e.message)
    if isinstance(e, DatabaseUnavailable):
        log.warn("database unavailable answering {path}: {reason}",
                 path=request.path.decode("latin-1", "replace"), reason=str(e))
        request.setHeader(b"Retry-After", b"2")
        return error_body(request, 503, "database_unavailable",
                          "the database is unavailable right now; try again shortly")
    if isinstance(e, HTTPException):
        return _http_exception(request, e)
    log.failure("unhandled error in {method} {path}", failure,
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1", "replace"))
    return error_body(request, 500, "internal_error", "internal error")


def _http_exception(request, e: HTTPException) -> bytes:
    """Routing failures (werkzeug): 404, 405 with Allow, and the rest by status."""
    if e.code == 405:
        allowed = getattr(e, "valid_methods", None) or []
        request.setHeader(b"Allow", ", ".join(allowed).encode())
        return error_body(request, 405, "method_not_allowed",
                          f"{request.method.decode('latin-1')} is not allowed here"
                          + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
    if e.code == 404:
        api = (request.path or b"").startswith(b"/api/")
        return error_body(request, 404, "not_found",
                          "no such API endpoint" if api else "not found")
    status = e.code or 500
    return error_body(request, status, _HTTP_CODES.get(status, "http_error"),
                      e.description or e.name)
