"""API errors: every failure becomes the one JSON error shape with the right status."""

from __future__ import annotations

from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from streamspace.db.pool import DatabaseUnavailable
from streamspace.web import error_body

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


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


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
        if e.code == 405:
            allowed = getattr(e, "valid_methods", None) or []
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            return error_body(request, 405, "method_not_allowed",
                              f"{request.method.decode('latin-1')} is not allowed here"
                              + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        if e.code == 404:
            return error_body(request, 404, "not_found", "no such API endpoint")
        return error_body(request, e.code or 500, _HTTP_CODES.get(e.code, "http_error"),
                          e.description or e.name)
    log.failure("unhandled error in {method} {path}", failure,
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1", "replace"))
    return error_body(request, 500, "internal_error", "internal error")
