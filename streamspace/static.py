"""The web UI as a resource: htdocs/ pages and assets, and noVNC under /novnc/.

Mounted at "/" by ControlPlaneWeb (everything the API and WebSocket routes do not take).

  /                          index.html (home: catalog and my sessions)
  /login, /account           login.html, account.html (any /<page> -> <page>.html)
  /admin, /admin/            redirect to /admin/agents
  /admin/<page>              admin/<page>.html
  /vnc-viewer/<session_id>   viewer.html (the page reads the id from its URL)
  /novnc/core/..., /novnc/vendor/...
                             the pinned @novnc/novnc package from htdocs/node_modules
  /css/..., /js/..., /img/...  assets

Only files with a known extension are served, from an allowlist of path characters; no
directory listings, no dot files, nothing outside the roots (symlinks included). Unknown
paths under /api/ get the API's JSON 404; other unknown paths a small HTML 404.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.logger import Logger
from twisted.web import resource, static

from streamspace.api.errors import error_body

log = Logger()

HTDOCS = Path(__file__).resolve().parents[1] / "htdocs"
NOVNC_SUBDIR = Path("node_modules") / "@novnc" / "novnc"
NOVNC_DIRS = ("core", "vendor")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}

SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

# Pages talk only to their own origin: scripts, styles and WebSockets from 'self' (no
# inline script), images also from data: (noVNC draws its cursor into a data: URL).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'self'")

NOT_FOUND_PAGE = (b"<!doctype html><html lang=en><meta charset=utf-8>"
                  b"<title>Not found - StreamSpace</title>"
                  b"<link rel=stylesheet href=/css/app.css>"
                  b"<main class=narrow><h1>Not found</h1>"
                  b"<p>There is no page here. <a href=/>Go to StreamSpace</a>.</p></main>")


def _segments(postpath: list[bytes]) -> list[str] | None:
    """Decoded path segments, or None if any is unusable (traversal, dot file, odd bytes).
    A single trailing empty segment (a trailing slash) is dropped."""
    parts = list(postpath)
    if parts and parts[-1] == b"":
        parts.pop()
    out = []
    for raw in parts:
        try:
            seg = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not SEGMENT.fullmatch(seg):
            return None
        out.append(seg)
    return out


def _inside(root: Path, parts: list[str]) -> Path | None:
    """root/parts as a regular file with a served extension, resolved inside root."""
    if not parts:
        return None
    try:
        path = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    if path.suffix not in CONTENT_TYPES:
        return None
    return path


class StaticUI(resource.Resource):
    """A leaf resource resolving the rest of the path itself (see the module map)."""

    isLeaf = True

    def __init__(self, root: Path = HTDOCS) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.novnc = (self.root / NOVNC_SUBDIR).resolve()

    # -- routing ---------------------------------------------------------------------

    def locate(self, parts: list[str]) -> tuple[Path | None, str | None]:
        """(file to serve, or None; a redirect target, or None) for path segments."""
        if not parts:
            return _inside(self.root, ["index.html"]), None
        head = parts[0]
        if head == "node_modules" or head.startswith("package"):
            return None, None
        if head == "novnc":
            if len(parts) < 3 or parts[1] not in NOVNC_DIRS:
                return None, None
            return _inside(self.novnc, parts[1:]), None
        if head == "vnc-viewer":
            if len(parts) != 2:
                return None, None
            return _inside(self.root, ["viewer.html"]), None
        if head == "admin" and len(parts) == 1:
            return None, "/admin/agents"
        if "." not in parts[-1]:  # a clean page URL: /login, /admin/users
            if len(parts) > 2 or (len(parts) == 2 and head != "admin"):
                return None, None
            return _inside(self.root, [*parts[:-1], parts[-1] + ".html"]), None
        return _inside(self.root, parts), None

    def render(self, request):
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        path_parts = request.prepath + request.postpath
        if path_parts and path_parts[0] == b"api":
            return self._json_404(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"method not allowed\n"
        parts = _segments(request.postpath)
        found, redirect = self.locate(parts) if parts is not None else (None, None)
        if redirect is not None:
            request.setResponseCode(302)
            request.setHeader(b"Location", redirect.encode())
            request.setHeader(b"Cache-Control", b"no-cache")
            return b""
        if found is None:
            return self._html_404(request)
        self._cache_headers(request, found)
        if found.suffix == ".html":
            request.setHeader(b"Content-Security-Policy", CSP.encode())
            request.setHeader(b"Referrer-Policy", b"same-origin")
            request.setHeader(b"X-Frame-Options", b"SAMEORIGIN")
        file = static.File(str(found), defaultType="application/octet-stream")
        file.contentTypes = CONTENT_TYPES
        file.contentEncodings = {}
        return file.render(request)

    def _cache_headers(self, request, found: Path) -> None:
        if found.is_relative_to(self.novnc):
            # The pinned noVNC release: its files change only with the pin.
            request.setHeader(b"Cache-Control", b"public, max-age=86400")
        else:
            # Our own files are not fingerprinted: revalidate (Last-Modified -> 304).
            request.setHeader(b"Cache-Control", b"no-cache")

    @staticmethod
    def _html_404(request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Security-Policy", CSP.encode())
        return b"" if request.method == b"HEAD" else NOT_FOUND_PAGE

    @staticmethod
    def _json_404(request) -> bytes:
        return error_body(request, 404, "not_found", "no such API endpoint")


def build_static_resource(root: Path | str = HTDOCS) -> StaticUI:
    """The UI resource for ControlPlaneWeb(static=...); warns when noVNC is missing."""
    ui = StaticUI(Path(root))
    if not (ui.novnc / "core" / "rfb.js").is_file():
        log.warn("noVNC is not installed in {path}: the session viewer will not work; "
                 "run scripts/setup.sh (npm ci in htdocs/)", path=str(ui.novnc))
    return ui
