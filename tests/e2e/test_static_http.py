"""The static UI resource over real HTTP: pages, module types, noVNC, caching, refusals."""

from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.slow


def fetch(server, path: str, method: str = "GET", headers: dict | None = None):
    """The raw request line as given (no client-side path normalisation)."""
    u = urlparse(server.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path, marker", [
    ("/", b"/js/home.js"),
    ("/login", b"/js/login.js"),
    ("/account", b"/js/account.js"),
    ("/admin/agents", b"/js/admin-agents.js"),
    ("/admin/sessions", b"/js/admin-sessions.js"),
    ("/admin/users", b"/js/admin-users.js"),
    ("/admin/templates", b"/js/admin-templates.js"),
    ("/admin/audit", b"/js/admin-audit.js"),
    (f"/vnc-viewer/{uuid.uuid4()}", b"/js/viewer.js"),
])
def test_pages_are_html_with_a_strict_policy(server, path, marker):
    status, headers, body = fetch(server, path)
    assert status == 200, path
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert marker in body
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-cache"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert b"<script>" not in body and b"style=" not in body  # nothing inline to allow


@pytest.mark.parametrize("path, content_type", [
    ("/js/api.js", "text/javascript; charset=utf-8"),
    ("/js/viewer.js", "text/javascript; charset=utf-8"),
    ("/css/app.css", "text/css; charset=utf-8"),
    ("/img/favicon.svg", "image/svg+xml"),
])
def test_assets_have_their_types_and_revalidate(server, path, content_type):
    status, headers, body = fetch(server, path)
    assert status == 200 and body
    assert headers["content-type"] == content_type
    assert headers["cache-control"] == "no-cache"
    status, _, body = fetch(server, path, headers={"If-Modified-Since": headers["last-modified"]})
    assert status == 304 and body == b""


def test_novnc_is_served_from_the_pinned_package(server):
    status, headers, body = fetch(server, "/novnc/core/rfb.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"export default class RFB" in body
    assert "max-age" in headers["cache-control"]
    status, _, _ = fetch(server, "/novnc/vendor/pako/lib/zlib/inflate.js")
    assert status == 200


def test_admin_redirects_to_agents(server):
    for path in ("/admin", "/admin/"):
        status, headers, _ = fetch(server, path)
        assert status == 302 and headers["location"] == "/admin/agents"


@pytest.mark.parametrize("path", [
    "/novnc/core/../../package.json",
    "/novnc/core/..%2f..%2fpackage.json",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/js/../../streamspace/static.py",
    "/node_modules/@novnc/novnc/package.json",
    "/novnc/package.json",
    "/novnc/docs/API.md",
    "/package.json",
    "/package-lock.json",
    "/.gitignore",
    "/js/",
    "/admin/nope",
    "/nope/deeper/page",
    "/vnc-viewer/",
    "/vnc-viewer/a/b",
    "/js/api.js%00.html",
])
def test_no_traversal_listing_or_stray_files(server, path):
    status, headers, body = fetch(server, path)
    assert status == 404, path
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"Not found" in body


def test_unknown_api_paths_keep_the_json_error(server):
    for path in ("/api/nope", "/api/v1/nope"):
        status, headers, body = fetch(server, path)
        assert status == 404
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "not_found"


def test_only_get_and_head(server):
    status, headers, _ = fetch(server, "/", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = fetch(server, "/", method="HEAD")
    assert status == 200 and body == b""
