"""Signed tokens (JWT, HS256): login tokens now, short-lived VNC tokens later.

Every token carries `typ`; `decode` is always told which type it expects, so a token
minted for one purpose (e.g. a VNC token) is never accepted as another (a login token).
Time comes from the caller (the reactor's clock), never from `time.time()`, so expiry is
testable; `iat` is a float so a token issued in the same second as a password change
compares correctly against `users.tokens_valid_after`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
LOGIN = "login"
# Longest token we even try to decode; anything longer is garbage.
MAX_TOKEN_LENGTH = 4096


class TokenInvalid(Exception):
    """The token cannot be used; the message is safe to show to the client."""


@dataclass(frozen=True)
class Claims:
    sub: str
    typ: str
    jti: str
    iat: float
    exp: float
    role: str | None
    extra: dict[str, Any]


def issue(secret: str, *, typ: str, sub: str, now: float, lifetime: float,
          role: str | None = None, **extra: Any) -> tuple[str, Claims]:
    """Sign a token of type `typ` for subject `sub`, valid `lifetime` seconds from `now`."""
    iat = round(now, 3)
    claims: dict[str, Any] = {
        "sub": sub, "typ": typ, "jti": str(uuid.uuid4()),
        "iat": iat, "exp": iat + lifetime, **extra,
    }
    if role is not None:
        claims["role"] = role
    token = jwt.encode(claims, secret, algorithm=ALGORITHM)
    return token, _claims(claims)


def issue_login(secret: str, *, user_id: str, role: str, now: float,
                lifetime: float) -> tuple[str, Claims]:
    return issue(secret, typ=LOGIN, sub=user_id, role=role, now=now, lifetime=lifetime)


def decode(secret: str, token: str, *, expected_typ: str, now: float) -> Claims:
    """Verify signature, type and expiry; raise `TokenInvalid` with a reason otherwise."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("malformed token")
    try:
        raw = jwt.decode(
            token, secret, algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub", "jti", "typ"],
                     "verify_exp": False, "verify_iat": False, "verify_nbf": False})
    except jwt.InvalidTokenError:
        raise TokenInvalid("invalid token") from None
    try:
        claims = _claims(raw)
    except (TypeError, ValueError):
        raise TokenInvalid("invalid token") from None
    if claims.typ != expected_typ:
        raise TokenInvalid("wrong kind of token")
    if now >= claims.exp:
        raise TokenInvalid("token expired")
    return claims


def _claims(raw: dict[str, Any]) -> Claims:
    sub, typ, jti = raw["sub"], raw["typ"], raw["jti"]
    if not all(isinstance(v, str) for v in (sub, typ, jti)):
        raise TypeError("string claims expected")
    iat, exp = raw["iat"], raw["exp"]
    if isinstance(iat, bool) or isinstance(exp, bool):
        raise TypeError("numeric claims expected")
    role = raw.get("role")
    if role is not None and not isinstance(role, str):
        raise TypeError("role must be a string")
    uuid.UUID(jti)  # ValueError when not a UUID
    known = {"sub", "typ", "jti", "iat", "exp", "role"}
    return Claims(sub=sub, typ=typ, jti=jti, iat=float(iat), exp=float(exp), role=role,
                  extra={k: v for k, v in raw.items() if k not in known})
