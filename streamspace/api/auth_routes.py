"""/auth: login, refresh, logout, me, change own password."""

from __future__ import annotations

import re

from twisted.logger import Logger

from streamspace import metrics
from streamspace.api import shapes
from streamspace.api.auth import Principal
from streamspace.api.body import USERNAME, Field, read_json, validate
from streamspace.api.errors import ApiError, bad_request, unauthorized
from streamspace.auth import passwords, tokens
from streamspace.auth.password_policy import MAX_LENGTH, MIN_LENGTH, password_problem
from streamspace.db import tokens as tokens_db
from streamspace.db import users
from streamspace.db.pool import DatabaseUnavailable

MIN_PASSWORD = MIN_LENGTH
MAX_PASSWORD = MAX_LENGTH

LOGIN_FIELDS = {
    "username": Field("string", required=True, min_len=1, max_len=256),
    "password": Field("string", required=True, min_len=1, max_len=MAX_PASSWORD),
}
PASSWORD_FIELDS = {
    "current_password": Field("string", required=True, min_len=1, max_len=MAX_PASSWORD),
    "new_password": Field("string", required=True, min_len=MIN_PASSWORD, max_len=MAX_PASSWORD),
}

INVALID_CREDENTIALS = "invalid username or password"

log = Logger()


def now(api) -> float:
    """The control plane's clock, at the precision tokens and `tokens_valid_after` share."""
    return round(api.ctx.reactor.seconds(), 3)


def check_password_policy(password: str, username: str) -> None:
    """400 `weak_password` unless `password` follows the policy (auth.password_policy)."""
    problem = password_problem(password, username)
    if problem:
        raise bad_request(problem, "weak_password")


def _token_response(api, user: dict, token: str, claims: tokens.Claims) -> dict:
    return {"token": token, "token_type": "Bearer",
            "expires_at": shapes.iso_epoch(claims.exp), "user": shapes.user(user)}


def _issue(api, user_id: str, role: str, at: float) -> tuple[str, tokens.Claims]:
    return tokens.issue_login(api.ctx.jwt_secret, user_id=user_id, role=role, now=at,
                              lifetime=api.ctx.token_lifetime)


async def _refuse_if_limited(api, request, principal: Principal | None, account: str,
                             action: str, target_id: str) -> None:
    """429 when the rate limit says so; the first refusal per limit and window is
    audited (each one would let a flood fill the audit log), every one is counted."""
    refusal = api.login_limiter.refusal(api.client_addr(request), account)
    if refusal is None:
        return
    metrics.login_refused(refusal.scope)
    if refusal.first:
        async def record(cursor):
            await api.audit(cursor, request, principal, action, "user", target_id,
                            success=False, actor_name=account,
                            details={"reason": "rate_limited", "scope": refusal.scope})

        try:
            await api.ctx.db.transaction(record)
        except DatabaseUnavailable:
            log.warn("could not audit a rate-limited {action}", action=action)
    raise ApiError(429, "too_many_attempts",
                   f"too many failed attempts; try again in {refusal.retry_after} s",
                   {"Retry-After": str(refusal.retry_after)})


async def login(api, request):
    body = validate(read_json(request), LOGIN_FIELDS)
    username = body["username"].strip().lower()
    addr = api.client_addr(request)
    limiter = api.login_limiter
    await _refuse_if_limited(api, request, None, username, "auth.login", username)
    stamp = limiter.begin(addr, username)
    try:
        user = await users.get_for_login(api.ctx.db, username) \
            if re.fullmatch(USERNAME, username) else None
        # Same work whether or not the user exists (a dummy hash when it does not).
        ok = await passwords.verify_password(
            api.ctx.reactor, user["password_hash"] if user else None, body["password"])
    except DatabaseUnavailable:
        limiter.succeeded(addr, username, stamp)  # our outage is not the caller's failure
        raise
    if not ok or user["disabled"]:
        reason = "disabled" if ok else "bad_credentials"

        async def record_failure(cursor):
            await api.audit(cursor, request, None, "auth.login", "user", username,
                            success=False, details={"reason": reason},
                            actor_name=username)

        await api.ctx.db.transaction(record_failure)
        if ok:
            raise ApiError(403, "account_disabled", "this account is disabled")
        raise ApiError(401, "invalid_credentials", INVALID_CREDENTIALS)
    limiter.succeeded(addr, username, stamp)
    token, claims = _issue(api, user["id"], user["role"], now(api))
    principal = Principal(user["id"], user["username"], user["role"], claims.jti, claims.exp,
                          user["max_sessions"])

    async def record_success(cursor):
        await api.audit(cursor, request, principal, "auth.login", "user", user["id"])

    await api.ctx.db.transaction(record_success)
    return api.ok(request, _token_response(api, user, token, claims))


async def refresh(api, request):
    principal = await api.principal(request)
    user = await users.get(api.ctx.db, principal.user_id)
    if user is None:
        raise unauthorized("this account no longer exists")
    at = now(api)
    token, claims = _issue(api, user["id"], user["role"], at)

    async def work(cursor):
        await tokens_db.revoke(cursor, principal.jti, principal.expires_at)
        await tokens_db.purge_expired(cursor, at)
        await api.audit(cursor, request, principal, "auth.refresh", "user", principal.user_id)

    await api.ctx.db.transaction(work)
    return api.ok(request, _token_response(api, user, token, claims))


async def logout(api, request):
    principal = await api.principal(request)

    async def work(cursor):
        await tokens_db.revoke(cursor, principal.jti, principal.expires_at)
        await tokens_db.purge_expired(cursor, now(api))
        await api.audit(cursor, request, principal, "auth.logout", "user", principal.user_id)

    await api.ctx.db.transaction(work)
    return api.no_content(request)


async def me(api, request):
    principal = await api.principal(request)
    user = await users.get(api.ctx.db, principal.user_id)
    if user is None:
        raise unauthorized("this account no longer exists")
    out = shapes.user(user)
    out["session_limit"] = (user["max_sessions"] if user["max_sessions"] is not None
                            else api.ctx.default_max_sessions)
    return api.ok(request, out)


async def change_password(api, request):
    principal = await api.principal(request)
    body = validate(read_json(request), PASSWORD_FIELDS)
    check_password_policy(body["new_password"], principal.username)
    addr = api.client_addr(request)
    await _refuse_if_limited(api, request, principal, principal.username,
                             "user.password_change", principal.user_id)
    stamp = api.login_limiter.begin(addr, principal.username)
    current = await users.get_for_login(api.ctx.db, principal.username)
    if current is None or not await passwords.verify_password(
            api.ctx.reactor, current["password_hash"], body["current_password"]):
        async def record_failure(cursor):
            await api.audit(cursor, request, principal, "user.password_change", "user",
                            principal.user_id, success=False,
                            details={"reason": "bad_current_password"})

        await api.ctx.db.transaction(record_failure)
        raise ApiError(403, "invalid_credentials", "the current password is wrong")
    api.login_limiter.succeeded(addr, principal.username, stamp)
    new_hash = await passwords.hash_password(api.ctx.reactor, body["new_password"])
    at = now(api)

    async def work(cursor):
        # Every token issued before now stops working (other devices must log in again).
        user = await users.update(cursor, principal.user_id, {"password_hash": new_hash},
                                  invalidate_tokens_at=at)
        await tokens_db.revoke(cursor, principal.jti, principal.expires_at)
        await api.audit(cursor, request, principal, "user.password_change", "user",
                        principal.user_id)
        return user

    user = await api.ctx.db.transaction(work)
    if user is None:
        raise unauthorized("this account no longer exists")
    token, claims = _issue(api, user["id"], user["role"], at)
    return api.ok(request, _token_response(api, user, token, claims))
