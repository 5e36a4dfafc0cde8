"""The VNC proxy: decides who may watch, asks the session's agent for a tunnel, keeps the
live tunnels and ends them when access ends.

Flow (docs/protocol.md, "Tunnels"): a viewer is authorised (token, owner, running) before
anything is allocated, and its single-use token is spent; once its WebSocket is open it
takes a place under the viewer limits, a tunnel id and one-time secret are allocated,
`vnc_connect` goes to the agent, and the viewer waits (not read) until the agent's tunnel
leg arrives with the secret (TunnelPairing), or is refused with a reason.

Access is checked again while a viewer watches: at once where this process is told
(`end_for_user`, `end_for_session`, called by the API after the change is committed), and
every REVALIDATE_INTERVAL against the database, which also catches changes made through
another replica.
"""

from __future__ import annotations

import secrets
import uuid

from twisted.internet import defer, task
from twisted.logger import Logger

from streamspace.auth import agent_tokens, tokens
from streamspace.db import audit
from streamspace.db import tokens as tokens_db
from streamspace.db import vnc as vnc_db
from streamspace.metrics import TUNNEL_BYTES, TUNNEL_SECONDS, TUNNELS, TUNNELS_ACTIVE
from streamspace.relay import access
from streamspace.relay.access import CLOSE_DENIED, CLOSE_UNAVAILABLE, Grant, Refusal
from streamspace.relay.limits import ViewerLimits
from streamspace.relay.link import Link
from streamspace.relay.pairing import TunnelPairing
from streamspace.relay.rfb import ClientStreamParser
from streamspace_common.memory import tune_malloc_for_relaying

log = Logger()

TUNNEL_ARRIVAL_TIMEOUT = 15.0
ACTIVITY_WRITE_INTERVAL = 15.0
REVALIDATE_INTERVAL = 5.0
FORGET_TOKENS_INTERVAL = 60.0



class VncProxy:
    def __init__(self, reactor, db, hub, jwt_secret: str, idle_timeout: float,
                 max_viewers_per_session: int = 10, max_viewers_per_user: int = 20) -> None:
        self.reactor = reactor
        self.db = db
        self.hub = hub
        self.jwt_secret = jwt_secret
        self.idle_timeout = idle_timeout
        self.limits = ViewerLimits(max_viewers_per_session, max_viewers_per_user)
        self.pending: dict[str, TunnelPairing] = {}  # waiting for their tunnel leg
        self.pairings: set[TunnelPairing] = set()  # every live one
        self.accepting = True
        self._last_activity_write: dict[str, float] = {}
        self._last_revalidation = 0.0
        self._last_token_purge = 0.0
        self._sweeper = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self._sweep()))
        self._sweeper.clock = reactor
        tune_malloc_for_relaying()  # large reads and frames reuse heap, not fresh mmaps

    @property
    def links(self) -> set[Link]:
        return {p.link for p in self.pairings if p.link is not None and p.link.running}

    # -- the viewer ---------------------------------------------------------------------

    async def authorize(self, session_id: str, raw_token: str, client_addr: str = ""
                        ) -> Grant | Refusal:
        """A Grant for a viewer who may connect (its token is spent), else a Refusal."""
        if not raw_token:
            return Refusal(CLOSE_DENIED,
                           "missing VNC token (POST /api/v1/sessions/{id}/vnc-token)")
        try:
            claims = tokens.decode(self.jwt_secret, raw_token, expected_typ=access.VNC_TOKEN_TYP,
                                   now=self.reactor.seconds())
        except tokens.TokenInvalid as e:
            return Refusal(CLOSE_DENIED, f"VNC token rejected: {e}")
        if claims.extra.get("sid") != session_id:
            return Refusal(CLOSE_DENIED, "VNC token is for another session")
        if not (_is_uuid(session_id) and _is_uuid(claims.sub)):
            return Refusal(CLOSE_DENIED, "no such session")
        row = await vnc_db.viewer_target(self.db, session_id, claims.sub)
        refusal = access.check(row, claims.sub, claims.role, claims.iat)
        if refusal is not None:
            return refusal
        if not row["agent_id"]:
            return Refusal(CLOSE_UNAVAILABLE, "the session is on no agent")
        if not await vnc_db.use_token(self.db, claims.jti, claims.exp):
            return Refusal(CLOSE_DENIED, "this VNC token was already used; ask for a new one")
        return Grant(session_id=session_id, agent_id=row["agent_id"], viewer_id=claims.sub,
                     viewer_name=row["viewer"]["username"], role=claims.role or "",
                     issued_at=claims.iat, client_addr=client_addr)

    def refuse(self, leg, refusal: Refusal) -> None:
        TUNNELS.labels(outcome=refusal.outcome).inc()
        leg.close_leg(refusal.code, refusal.reason)

    def admit(self, leg, grant: Grant) -> None:
        """The viewer's WebSocket is open: take its place and ask the agent for a tunnel."""
        if not self.accepting:
            self.refuse(leg, Refusal(access.CLOSE_GOING_AWAY, "the control plane is "
                                                              "shutting down"))
            return
        if not self.hub.connected(grant.agent_id):
            self.refuse(leg, Refusal(CLOSE_UNAVAILABLE, "the session's agent is offline",
                                     "agent_offline"))
            return
        too_many = self.limits.admit(grant.session_id, grant.viewer_id)
        if too_many is not None:
            self.refuse(leg, Refusal(access.CLOSE_TOO_MANY, too_many, "too_many_viewers"))
            return
        tunnel_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        pairing = TunnelPairing(
            tunnel_id, agent_tokens.hash_token(secret), leg, grant, self.reactor,
            TUNNEL_ARRIVAL_TIMEOUT,
            request=lambda p: self.hub.send_ephemeral(
                grant.agent_id, "vnc_connect", grant.session_id,
                {"tunnel_id": tunnel_id, "secret": secret}),
            make_link=self._make_link, on_end=self._ended)
        self.pending[tunnel_id] = pairing
        self.pairings.add(pairing)
        pairing.start()

    # -- the tunnel leg -----------------------------------------------------------------

    def claim(self, tunnel_id: str, secret: str | None) -> TunnelPairing | None:
        """The pairing waiting for this tunnel if `secret` is its one-time secret (which
        is then spent), else None."""
        pairing = self.pending.get(tunnel_id)
        if pairing is None or not agent_tokens.verify(secret, pairing.secret_hash):
            return None
        del self.pending[tunnel_id]
        return pairing

    # -- live tunnels -------------------------------------------------------------------

    def _make_link(self, viewer, tunnel) -> Link:
        grant = viewer.owner.grant
        link = Link(viewer, tunnel, self.reactor, inspector=ClientStreamParser(),
                    on_input=lambda n: self._activity(grant.session_id))
        TUNNELS_ACTIVE.inc()
        TUNNELS.labels(outcome="linked").inc()
        self._audit(grant, "vnc.connect", {"tunnel_id": viewer.owner.tunnel_id})
        log.info("VNC tunnel {tunnel_id} linked for session {session_id}",
                 tunnel_id=viewer.owner.tunnel_id, session_id=grant.session_id)
        return link

    def _activity(self, session_id: str) -> None:
        now = self.reactor.seconds()
        if now - self._last_activity_write.get(session_id, 0.0) < ACTIVITY_WRITE_INTERVAL:
            return
        self._last_activity_write[session_id] = now
        d = defer.Deferred.fromCoroutine(vnc_db.touch_activity(self.db, session_id))
        d.addErrback(lambda f: log.warn("recording activity failed: {e}",
                                        e=f.getErrorMessage()))

    def _ended(self, pairing: TunnelPairing) -> None:
        grant = pairing.grant
        self.pending.pop(pairing.tunnel_id, None)
        self.pairings.discard(pairing)
        self.limits.release(grant.session_id, grant.viewer_id)
        if not any(p.grant.session_id == grant.session_id for p in self.pairings):
            self._last_activity_write.pop(grant.session_id, None)  # bounded by live sessions
        if pairing.outcome != "linked":
            TUNNELS.labels(outcome=pairing.outcome or "abandoned").inc()
        if pairing.reply is not None and pairing.outcome != "agent_failed":
            self.hub.send_ephemeral(grant.agent_id, "vnc_disconnect", grant.session_id,
                                    {"tunnel_id": pairing.tunnel_id}).addErrback(lambda f: None)
        link = pairing.link
        if link is None:
            return
        TUNNELS_ACTIVE.dec()
        duration = self.reactor.seconds() - link.started_at
        TUNNEL_BYTES.labels(direction="to_session").inc(link.bytes_to_session)
        TUNNEL_BYTES.labels(direction="to_browser").inc(link.bytes_to_viewer)
        TUNNEL_SECONDS.observe(duration)
        self._audit(grant, "vnc.disconnect", {
            "tunnel_id": pairing.tunnel_id, "bytes_to_session": link.bytes_to_session,
            "bytes_to_browser": link.bytes_to_viewer, "duration_seconds": round(duration, 3),
            "reason": pairing.close_reason[:200]})
        if link.inspector is not None and link.inspector.unparseable:
            log.info("VNC tunnel {tunnel_id}: input activity was not counted after the "
                     "viewer's stream could not be followed ({why})",
                     tunnel_id=pairing.tunnel_id, why=link.inspector.unparseable)
        log.info("VNC tunnel {tunnel_id} closed: {reason}", tunnel_id=pairing.tunnel_id,
                 reason=pairing.close_reason)

    def _audit(self, grant: Grant, action: str, details: dict) -> None:
        async def write(cursor):
            await audit.record(cursor, actor_id=grant.viewer_id, actor_name=grant.viewer_name,
                               action=action, target_type="session",
                               target_id=grant.session_id, client_addr=grant.client_addr,
                               details=details)

        d = defer.Deferred.fromCoroutine(self.db.transaction(write))
        d.addErrback(lambda f: log.warn("audit write failed: {e}", e=f.getErrorMessage()))

    # -- ending access ------------------------------------------------------------------

    def _end_where(self, match, code: int, reason: str) -> int:
        ended = [p for p in self.pairings if match(p.grant)]
        for pairing in ended:
            pairing.end(code, reason)
        return len(ended)

    async def end_for_user(self, user_id: str, reason: str) -> int:
        """End every tunnel this user watches through this process (their account was
        disabled, their password reset, their role changed). Their unused VNC tokens are
        refused by `authorize` already (access.check)."""
        return self._end_where(lambda g: g.viewer_id == user_id, CLOSE_DENIED,
                               f"access ended: {reason}")

    async def end_for_session(self, session_id: str, reason: str) -> int:
        """End every tunnel to this session through this process (it is being deleted)."""
        return self._end_where(lambda g: g.session_id == session_id,
                               access.CLOSE_NOT_RUNNING, reason)

    async def revalidate(self) -> int:
        """End the tunnels whose viewer may no longer watch, by the database's account."""
        live = list(self.pairings)
        if not live:
            return 0
        now = await vnc_db.viewers_now(
            self.db, sorted({(p.grant.session_id, p.grant.viewer_id) for p in live}))
        ended = 0
        for pairing in live:
            g = pairing.grant
            refusal = access.check(now.get((g.session_id, g.viewer_id)), g.viewer_id,
                                   g.role, g.issued_at)
            if refusal is not None:
                pairing.end(refusal.code, f"access ended: {refusal.reason}")
                ended += 1
        return ended

    # -- sweeps -------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Idle tunnels, access re-checks, spent token ids (LoopingCall: one at a time)."""
        try:
            now = self.reactor.seconds()
            for pairing in list(self.pairings):
                link = pairing.link
                if link is not None and now - link.last_traffic > self.idle_timeout:
                    pairing.end(1000, f"no traffic for {self.idle_timeout:.0f}s "
                                      "(VNC_PROXY_TIMEOUT)")
            if now - self._last_revalidation >= REVALIDATE_INTERVAL:
                self._last_revalidation = now
                await self.revalidate()
            if now - self._last_token_purge >= FORGET_TOKENS_INTERVAL:
                self._last_token_purge = now
                await self.db.transaction(lambda c: tokens_db.purge_expired(c, now))
        except Exception as e:
            log.warn("VNC proxy sweep failed: {e}", e=str(e) or type(e).__name__)

    def start(self) -> None:
        self.accepting = True
        interval = min(REVALIDATE_INTERVAL, self.idle_timeout / 2)
        self._sweeper.start(interval, now=False)

    def stop(self) -> None:
        self.accepting = False
        if self._sweeper.running:
            self._sweeper.stop()
        for pairing in list(self.pairings):
            pairing.end(access.CLOSE_GOING_AWAY, "control plane shutting down")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True
