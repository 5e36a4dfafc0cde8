"""Who is calling: the Bearer login token, re-checked against the database every request."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from twisted.internet.address import UNIXAddress

from streamspace.api.body import is_uuid
from streamspace.api.errors import forbidden, unauthorized
from streamspace.auth import tokens
from streamspace.auth.bearer import parse_bearer
from streamspace.db import users


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str
    jti: str
    expires_at: float
    max_sessions: int | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def bearer_token(request) -> str | None:
    return parse_bearer(request.getHeader(b"authorization"))


UNIX_PEER = "unix"  # a LISTEN_UNIX request whose proxy named no client


def client_addr(request, trusted_proxies=()) -> str:
    """The client's address: the peer, or, when the peer is a trusted reverse proxy, the
    right-most X-Forwarded-For entry that is not itself a trusted proxy. A peer on the
    LISTEN_UNIX socket is the reverse proxy (only its group may connect there)."""
    peer_address = request.getClientAddress()
    if isinstance(peer_address, UNIXAddress):
        return _forwarded_client(request, trusted_proxies) or UNIX_PEER
    peer = getattr(peer_address, "host", "") or ""
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    return _forwarded_client(request, trusted_proxies) or peer


def _forwarded_client(request, trusted_proxies) -> str | None:
    """The right-most X-Forwarded-For hop that is not a trusted proxy; None if there is
    no header, it is malformed (believe only what we saw) or every hop is trusted."""
    header = request.getHeader(b"x-forwarded-for")
    if not header:
        return None
    hops = [h.strip() for h in header.decode("latin-1").split(",")][-32:]
    for hop in reversed(hops):
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return None
        if not _trusted(str(ip), trusted_proxies):
            return str(ip)
    return None


def _trusted(addr: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)


async def authenticate(ctx, request) -> Principal:
    """The caller's principal, or 401: missing, malformed, tampered, expired, revoked
    tokens, tokens of another kind, deleted or disabled users, tokens from before a
    password change all fail here."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("authentication required: send `Authorization: Bearer <token>`")
    try:
        claims = tokens.decode(ctx.jwt_secret, token, expected_typ=tokens.LOGIN,
                               now=ctx.reactor.seconds())
    except tokens.TokenInvalid as e:
        raise unauthorized(str(e)) from None
    if not is_uuid(claims.sub):
        raise unauthorized("invalid token")
    state = await users.auth_state(ctx.db, claims.sub, claims.jti)
    if state is None or state["disabled"]:
        raise unauthorized("this account no longer exists or is disabled")
    if state["revoked"]:
        raise unauthorized("token has been revoked")
    # iat and tokens_valid_after are both the control plane's clock at millisecond precision
    if claims.iat + 1e-6 < state["tokens_valid_after"]:
        raise unauthorized("token is no longer valid (the password or account changed)")
    return Principal(user_id=state["id"], username=state["username"], role=state["role"],
                     jti=claims.jti, expires_at=claims.exp, max_sessions=state["max_sessions"])


async def require_admin(ctx, request) -> Principal:
    principal = await authenticate(ctx, request)
    if not principal.is_admin:
        raise forbidden()
    return principal
