"""The VNC proxy: authorises a viewer, asks the session's agent for a tunnel, links them.

Flow (docs/protocol.md, "Tunnels"): the browser leg is checked (token, owner, running,
origin) before anything is allocated; then a tunnel id and one-time secret are allocated,
`vnc_connect` goes to the agent, and the browser leg waits (not reading) until the agent's
tunnel leg arrives with the secret, or times out with a reason.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer, task
from twisted.logger import Logger

from streamspace.auth import agent_tokens, tokens
from streamspace.auth.bearer import parse_bearer
from streamspace.db import audit, fleet
from streamspace.metrics import TUNNEL_BYTES, TUNNEL_SECONDS, TUNNELS, TUNNELS_ACTIVE
from streamspace.relay.legs import Leg, LegFactory
from streamspace.relay.link import Link
from streamspace.relay.rfb import ClientStreamParser
from streamspace.sessions import states
from streamspace.web import error_body

log = Logger()

VNC_TOKEN_TYP = "vnc"
VNC_TOKEN_LIFETIME = 60.0
TUNNEL_ARRIVAL_TIMEOUT = 15.0
ACTIVITY_WRITE_INTERVAL = 15.0

# Close codes a viewer may see (reason text says more)
CLOSE_DENIED = 4001  # token missing/invalid/expired, wrong owner, bad origin
CLOSE_NOT_RUNNING = 4009
CLOSE_UNAVAILABLE = 4503
CLOSE_TIMEOUT = 4504


@dataclass
class PendingTunnel:
    tunnel_id: str
    secret_hash: str
    session_id: str
    browser: Leg
    arrived: defer.Deferred = field(default_factory=defer.Deferred)


class BrowserLeg(Leg):
    """The viewer's leg. Refusals are sent as a close with a reason (noVNC shows it)."""

    def onOpen(self) -> None:
        proxy: VncProxy = self.factory.proxy
        if self.factory.refusal is not None:
            code, reason = self.factory.refusal
            TUNNELS.labels(outcome="refused").inc()
            self.close_leg(code, reason)
            return
        self.transport.pauseProducing()  # not a byte read until the tunnel is linked
        self.parser = ClientStreamParser()
        self.pending = None
        d = defer.Deferred.fromCoroutine(proxy.connect(self, self.factory.target))
        d.addErrback(lambda f: (log.failure("vnc connect failed", f),
                                self.close_leg(1011, "internal error")))

    def leg_gone(self, reason: str) -> None:
        if getattr(self, "pending", None) is not None:
            self.factory.proxy.cancel(self.pending.tunnel_id)


class TunnelLeg(Leg):
    """The agent's leg: already authenticated by its one-time secret before the upgrade."""

    def onOpen(self) -> None:
        pending: PendingTunnel = self.factory.pending
        if pending.arrived.called:
            self.close_leg(1008, "tunnel already linked")
            return
        self.transport.pauseProducing()
        pending.arrived.callback(self)


class VncProxy:
    def __init__(self, reactor, db, hub, jwt_secret: str, public_url: str,
                 idle_timeout: float) -> None:
        self.reactor = reactor
        self.db = db
        self.hub = hub
        self.jwt_secret = jwt_secret
        self.public_url = public_url
        self.idle_timeout = idle_timeout
        self.pending: dict[str, PendingTunnel] = {}
        self.links: set[Link] = set()
        self._last_activity_write: dict[str, float] = {}
        self._sweeper = task.LoopingCall(self._close_idle)
        self._sweeper.clock = reactor

    # -- tokens -------------------------------------------------------------------------

    def issue_token(self, user_id: str, session_id: str) -> tuple[str, float]:
        token, claims = tokens.issue(self.jwt_secret, typ=VNC_TOKEN_TYP, sub=user_id,
                                     now=self.reactor.seconds(), lifetime=VNC_TOKEN_LIFETIME,
                                     sid=session_id)
        return token, claims.exp

    # -- browser leg --------------------------------------------------------------------

    async def authorize(self, request, session_id: str) -> tuple[dict | None, tuple | None]:
        """(target, None) for a viewer who may connect, else (None, (close code, reason))."""
        if not _origin_ok(request, self.public_url):
            return None, (CLOSE_DENIED, "origin not allowed")
        raw = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace")
        if not raw:
            return None, (CLOSE_DENIED, "missing VNC token (POST /api/v1/sessions/{id}/vnc-token)")
        try:
            claims = tokens.decode(self.jwt_secret, raw, expected_typ=VNC_TOKEN_TYP,
                                   now=self.reactor.seconds())
        except tokens.TokenInvalid as e:
            return None, (CLOSE_DENIED, f"VNC token rejected: {e}")
        if claims.extra.get("sid") != session_id:
            return None, (CLOSE_DENIED, "VNC token is for another session")
        try:
            uuid.UUID(session_id)
        except ValueError:
            return None, (CLOSE_DENIED, "no such session")
        target = await fleet.vnc_target(self.db, session_id)
        if target is None:
            return None, (CLOSE_DENIED, "no such session")
        if target["user_id"] == claims.sub:
            if target["owner_disabled"]:
                return None, (CLOSE_DENIED, "this account is disabled")
        elif not await self._is_admin(claims.sub):
            return None, (CLOSE_DENIED, "no such session")
        if target["state"] != states.RUNNING:
            return None, (CLOSE_NOT_RUNNING, f"the session is {target['state']}, not running")
        if not target["agent_id"]:
            return None, (CLOSE_UNAVAILABLE, "the session is on no agent")
        target.update(session_id=session_id, viewer_id=claims.sub,
                      client_addr=getattr(request.getClientAddress(), "host", ""))
        return target, None

    async def _is_admin(self, user_id: str) -> bool:
        rows = await self.db.query("SELECT role, disabled FROM users WHERE id = %s", (user_id,))
        return bool(rows) and rows[0][0] == "admin" and not rows[0][1]

    async def connect(self, browser: BrowserLeg, target: dict) -> None:
        if not self.hub.connected(target["agent_id"]):
            TUNNELS.labels(outcome="agent_offline").inc()
            browser.close_leg(CLOSE_UNAVAILABLE, "the session's agent is offline")
            return
        tunnel_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        pending = PendingTunnel(tunnel_id, agent_tokens.hash_token(secret), target["session_id"],
                                browser)
        self.pending[tunnel_id] = pending
        browser.pending = pending
        reply = self.hub.send_ephemeral(target["agent_id"], "vnc_connect",
                                        target["session_id"], {
                                            "tunnel_id": tunnel_id, "secret": secret})
        reply.addCallback(lambda r: self._agent_replied(pending, r))
        reply.addErrback(lambda f: None)
        pending.arrived.addTimeout(TUNNEL_ARRIVAL_TIMEOUT, self.reactor)
        try:
            tunnel = await pending.arrived
        except defer.TimeoutError:
            self.pending.pop(tunnel_id, None)
            TUNNELS.labels(outcome="timeout").inc()
            browser.close_leg(CLOSE_TIMEOUT, "the session's agent did not open the tunnel in "
                                             f"{TUNNEL_ARRIVAL_TIMEOUT:.0f}s")
            return
        except defer.CancelledError:
            return
        except _AgentRefused as e:
            self.pending.pop(tunnel_id, None)
            TUNNELS.labels(outcome="agent_failed").inc()
            browser.close_leg(CLOSE_UNAVAILABLE, f"the agent could not connect: {e}"[:120])
            return
        finally:
            if not reply.called:
                reply.cancel()
        browser.pending = None
        if browser._closing:
            tunnel.close_leg(1000, "viewer left")
            return
        link = Link(browser, tunnel, self.reactor, self._link_closed,
                    on_client_bytes=self.observe_input)
        link.session_id = target["session_id"]
        link.target = target
        link.tunnel_id = tunnel_id
        self.links.add(link)
        TUNNELS_ACTIVE.inc()
        TUNNELS.labels(outcome="linked").inc()
        link.start()
        self._audit(target, "vnc.connect", {"tunnel_id": tunnel_id})
        log.info("VNC tunnel {tunnel_id} linked for session {session_id}",
                 tunnel_id=tunnel_id, session_id=target["session_id"])

    def _agent_replied(self, pending: PendingTunnel, reply) -> None:
        ok, _result, reason = reply
        if not ok and not pending.arrived.called:
            pending.arrived.errback(_AgentRefused(reason or "vnc_connect failed"))

    def cancel(self, tunnel_id: str) -> None:
        pending = self.pending.pop(tunnel_id, None)
        if pending is not None and not pending.arrived.called:
            pending.arrived.cancel()

    # -- tunnel leg ---------------------------------------------------------------------

    def claim(self, tunnel_id: str, authorization: str | None) -> PendingTunnel | None:
        """The pending tunnel for a correct one-time secret (consumed), else None."""
        pending = self.pending.get(tunnel_id)
        secret = parse_bearer(authorization)
        if pending is None or not agent_tokens.verify(secret, pending.secret_hash):
            return None
        del self.pending[tunnel_id]
        return pending

    # -- linked tunnels -----------------------------------------------------------------

    def observe_input(self, link: Link, payload: bytes) -> None:
        inputs = link.browser.parser.feed(payload)
        if not inputs:
            return
        now = self.reactor.seconds()
        sid = link.session_id
        if now - self._last_activity_write.get(sid, 0.0) >= ACTIVITY_WRITE_INTERVAL:
            self._last_activity_write[sid] = now
            d = defer.Deferred.fromCoroutine(fleet.touch_activity(self.db, sid))
            d.addErrback(lambda f: log.warn("recording activity failed: {e}",
                                            e=f.getErrorMessage()))

    def _link_closed(self, link: Link) -> None:
        self.links.discard(link)
        if not any(other.session_id == link.session_id for other in self.links):
            self._last_activity_write.pop(link.session_id, None)  # bounded by live sessions
        TUNNELS_ACTIVE.dec()
        duration = self.reactor.seconds() - link.started_at
        TUNNEL_BYTES.labels(direction="to_session").inc(link.bytes_to_session)
        TUNNEL_BYTES.labels(direction="to_browser").inc(link.bytes_to_browser)
        TUNNEL_SECONDS.observe(duration)
        self._audit(link.target, "vnc.disconnect", {
            "tunnel_id": link.tunnel_id, "bytes_to_session": link.bytes_to_session,
            "bytes_to_browser": link.bytes_to_browser, "duration_seconds": round(duration, 3),
            "reason": link.close_reason[:200]})
        self.hub.send_ephemeral(link.target["agent_id"], "vnc_disconnect", link.session_id,
                                {"tunnel_id": link.tunnel_id}).addErrback(lambda f: None)
        log.info("VNC tunnel {tunnel_id} closed: {reason}", tunnel_id=link.tunnel_id,
                 reason=link.close_reason)

    def _audit(self, target: dict, action: str, details: dict) -> None:
        async def write(cursor):
            await audit.record(cursor, actor_id=target["viewer_id"], actor_name="",
                               action=action, target_type="session",
                               target_id=target["session_id"],
                               client_addr=target.get("client_addr"), details=details)

        d = defer.Deferred.fromCoroutine(self.db.transaction(write))
        d.addErrback(lambda f: log.warn("audit write failed: {e}", e=f.getErrorMessage()))

    def _close_idle(self) -> None:
        now = self.reactor.seconds()
        for link in list(self.links):
            if now - link.last_traffic > self.idle_timeout:
                link.close(1000, f"no traffic for {self.idle_timeout:.0f}s (VNC_PROXY_TIMEOUT)")

    def start(self) -> None:
        self._sweeper.start(min(5.0, self.idle_timeout / 2), now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for pending in list(self.pending.values()):
            pending.browser.close_leg(1000, "control plane shutting down")
        for link in list(self.links):
            link.close(1000, "control plane shutting down")

    # -- HTTP endpoints (Klein handlers) ------------------------------------------------

    def vnc_endpoint(self):
        async def endpoint(request, session_id: str):
            target, refusal = await self.authorize(request, session_id)
            return WebSocketResource(LegFactory(BrowserLeg, proxy=self, target=target,
                                                refusal=refusal))

        return endpoint

    def tunnel_endpoint(self):
        async def endpoint(request, tunnel_id: str):
            auth = request.getHeader(b"authorization")
            pending = self.claim(tunnel_id, auth.decode("latin-1") if auth else None)
            if pending is None:
                log.warn("tunnel {tunnel_id} refused: unknown tunnel or wrong secret",
                         tunnel_id=tunnel_id[:64])
                return error_body(request, 403, "forbidden", "unknown tunnel or wrong secret")
            return WebSocketResource(LegFactory(TunnelLeg, proxy=self, pending=pending))

        return endpoint


class _AgentRefused(Exception):
    pass


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

