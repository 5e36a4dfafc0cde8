"""The VNC path's HTTP surface: `POST /sessions/{id}/vnc-token` (a REST route) and the two
WebSocket upgrades, `/vnc/{session_id}` (the viewer) and `/agent/tunnel/{tunnel_id}` (the
agent), whose handlers the root resource mounts.

Here live the HTTP concerns: the query token, the Origin guard, the client's address,
status codes and error bodies. What may happen is the VNC proxy's decision
(streamspace.relay.proxy). A refused viewer still gets its WebSocket, closed at once
with a code and reason, because browsers hide an upgrade's HTTP status from noVNC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlparse

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger

from streamspace.api import auth as api_auth
from streamspace.api.body import is_uuid
from streamspace.api.errors import conflict, not_found
from streamspace.auth.bearer import parse_bearer
from streamspace.db import sessions as session_rows
from streamspace.relay.access import CLOSE_DENIED, Refusal, issue_token
from streamspace.relay.legs import MAX_TUNNEL_FRAME, LegFactory
from streamspace.sessions import states
from streamspace.web import error_body

log = Logger()

EXTRA = "vnc_proxy"  # where the proxy is wired in ctx.extras


async def issue_vnc_token(api, request, session_id):
    """A single-use token for one viewer of one running session (owner or admin)."""
    principal = await api.principal(request)
    if not is_uuid(session_id):
        raise not_found("no such session")
    owner = None if principal.is_admin else principal.user_id
    session = await session_rows.get(api.ctx.db, session_id.lower(), owner_id=owner)
    if session is None:
        raise not_found("no such session")
    if session["state"] != states.RUNNING:
        raise conflict("session_not_running", f"the session is {session['state']}, not running")
    token, expires = issue_token(api.ctx.jwt_secret, api.ctx.reactor.seconds(),
                                 principal.user_id, principal.role, str(session["id"]))
    return api.ok(request, {
        "token": token,
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
        "url": f"/api/v1/vnc/{session['id']}?token={token}",
    })


class _Admission:
    """The viewer leg's owner until its tunnel's pairing takes over."""

    def __init__(self, proxy, verdict) -> None:
        self.proxy, self.verdict = proxy, verdict

    def leg_opened(self, leg) -> None:
        if isinstance(self.verdict, Refusal):
            self.proxy.refuse(leg, self.verdict)
        else:
            self.proxy.admit(leg, self.verdict)

    def leg_gone(self, leg, reason: str) -> None:
        pass


def viewer_endpoint(proxy, public_url: str, trusted_proxies=()):
    """GET /api/v1/vnc/<session_id>?token=: the viewer's WebSocket."""

    async def endpoint(request, session_id: str):
        if not _origin_ok(request, public_url):
            verdict = Refusal(CLOSE_DENIED, "origin not allowed")
        elif not is_uuid(session_id):
            verdict = Refusal(CLOSE_DENIED, "no such session")
        else:
            raw = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace")
            verdict = await proxy.authorize(session_id.lower(), raw,
                                            api_auth.client_addr(request, trusted_proxies))
        return WebSocketResource(LegFactory(_Admission(proxy, verdict)))

    return endpoint


def tunnel_endpoint(proxy):
    """GET /api/v1/agent/tunnel/<tunnel_id> with `Authorization: Bearer <secret>`."""

    async def endpoint(request, tunnel_id: str):
        pairing = proxy.claim(tunnel_id, parse_bearer(request.getHeader(b"authorization")))
        if pairing is None:
            log.warn("tunnel {tunnel_id} refused: unknown tunnel or wrong secret",
                     tunnel_id=tunnel_id[:64])
            return error_body(request, 403, "forbidden", "unknown tunnel or wrong secret")
        return WebSocketResource(LegFactory(pairing, max_message=MAX_TUNNEL_FRAME))

    return endpoint


def _origin_ok(request, public_url: str) -> bool:
    """Cross-site WebSocket hijacking guard: a browser's Origin must be this site (the
    configured public URL, or the Host it connected to). Non-browser clients send none."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    o = urlparse(origin.decode("latin-1"))
    if not o.scheme or not o.netloc:
        return False
    allowed = {urlparse(public_url).netloc.lower()}
    host = request.getHeader(b"host")
    if host:
        allowed.add(host.decode("latin-1").lower())
    return o.netloc.lower() in allowed
