"""One module renders every error body; the rest raise or call it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from streamspace.api import errors
from streamspace.db.pool import DatabaseUnavailable

SOURCES = Path(__file__).resolve().parents[3] / "streamspace"
ERROR_LITERAL = re.compile(r"""["']error["']\s*:\s*\{\s*["']code["']""")


def test_no_other_module_builds_an_error_body():
    builders = [str(p.relative_to(SOURCES)) for p in SOURCES.rglob("*.py")
                if ERROR_LITERAL.search(p.read_text())]
    assert builders == ["api/errors.py"]


def _render(exc: Exception, path: bytes = b"/api/v1/x", method: bytes = b"GET"):
    request = DummyRequest([b""])
    request.path, request.method = path, method
    try:
        raise exc
    except Exception:
        body = errors.render(request, Failure())
    return request, json.loads(body)


def test_every_kind_of_failure_gets_the_one_shape():
    r, body = _render(errors.unauthorized("who are you"))
    assert (r.responseCode, body) == (401, {"error": {"code": "unauthorized",
                                                      "message": "who are you"}})
    assert r.responseHeaders.getRawHeaders(b"WWW-Authenticate") == [b"Bearer"]
    r, body = _render(DatabaseUnavailable("down"))
    assert r.responseCode == 503 and body["error"]["code"] == "database_unavailable"
    r, body = _render(MethodNotAllowed(valid_methods=["GET", "POST"]), method=b"PUT")
    assert r.responseCode == 405 and r.responseHeaders.getRawHeaders(b"Allow") == [b"GET, POST"]
    r, body = _render(NotFound(), path=b"/nowhere")
    assert (r.responseCode, body["error"]) == (404, {"code": "not_found",
                                                     "message": "not found"})
    r, body = _render(RuntimeError("secret detail"))
    assert (r.responseCode, body["error"]) == (500, {"code": "internal_error",
                                                     "message": "internal error"})
    assert r.responseHeaders.getRawHeaders(b"Content-Type") == [b"application/json"]
