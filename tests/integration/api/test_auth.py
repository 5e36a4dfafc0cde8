"""Login, tokens and their revocation, own password change, login rate limiting."""

from __future__ import annotations

import jwt
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from streamspace.auth.ratelimit import LoginRateLimiter
from streamspace.config import ip_networks
from tests.integration.api.support import PASSWORD, SECRET, count, make_user, token_for


@pytest_twisted.ensureDeferred
async def test_login_me_refresh_logout(client, db):
    await make_user(db, "alice")
    r = await client.post("/api/v1/auth/login", {"username": "alice", "password": PASSWORD})
    assert r.status == 200, r.body
    token = r.json["token"]
    assert r.json["user"]["username"] == "alice" and r.json["token_type"] == "Bearer"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_iat": False})
    assert {"exp", "iat", "sub", "role", "jti", "typ"} <= set(claims)
    assert claims["typ"] == "login" and claims["role"] == "user"
    assert 12 * 3600 - 5 < claims["exp"] - claims["iat"] <= 12 * 3600

    me = await client.get("/api/v1/auth/me", token=token)
    assert me.status == 200 and me.json["username"] == "alice"
    assert me.json["session_limit"] == 3

    r2 = await client.post("/api/v1/auth/refresh", token=token)
    assert r2.status == 200
    new = r2.json["token"]
    assert (await client.get("/api/v1/auth/me", token=token)).status == 401  # old revoked
    assert (await client.get("/api/v1/auth/me", token=new)).status == 200

    out = await client.post("/api/v1/auth/logout", token=new)
    assert out.status == 204 and out.body == b""
    gone = await client.get("/api/v1/auth/me", token=new)
    assert gone.status == 401 and gone.code == "unauthorized"
    assert "revoked" in gone.json["error"]["message"]
    assert gone.header("WWW-Authenticate") == "Bearer"
    assert await count(db, "audit_log", "action = 'auth.login' AND success") == 1
    assert await count(db, "audit_log", "action = 'auth.logout'") == 1


@pytest_twisted.ensureDeferred
async def test_login_failures_look_alike_and_are_audited(client, db):
    await make_user(db, "bob")
    wrong = await client.post("/api/v1/auth/login", {"username": "bob", "password": "nope"})
    nobody = await client.post("/api/v1/auth/login",
                               {"username": "nobody", "password": "nope"})
    assert wrong.status == nobody.status == 401
    assert wrong.json == nobody.json == {
        "error": {"code": "invalid_credentials", "message": "invalid username or password"}}
    assert await count(db, "audit_log", "action = 'auth.login' AND NOT success") == 2


@pytest_twisted.ensureDeferred
async def test_disabled_user_cannot_log_in_and_tokens_stop(client, db):
    admin = await make_user(db, "root", role="admin")
    carol = await make_user(db, "carol")
    token = token_for(carol)
    assert (await client.get("/api/v1/auth/me", token=token)).status == 200
    r = await client.patch(f"/api/v1/users/{carol['id']}", {"disabled": True},
                           token=token_for(admin))
    assert r.status == 200 and r.json["disabled"] is True
    assert (await client.get("/api/v1/auth/me", token=token)).status == 401
    login = await client.post("/api/v1/auth/login", {"username": "carol", "password": PASSWORD})
    assert login.status == 403 and login.code == "account_disabled"
    bad = await client.post("/api/v1/auth/login", {"username": "carol", "password": "wrong"})
    assert bad.status == 401


@pytest_twisted.ensureDeferred
async def test_token_kinds_expiry_and_tampering(client, db):
    dave = await make_user(db, "dave")
    me = "/api/v1/auth/me"
    expired = token_for(dave, now=reactor.seconds() - 7200, lifetime=3600)
    assert (await client.get(me, token=expired)).json["error"]["message"] == "token expired"
    vnc = token_for(dave, typ="vnc")  # another kind of token is never a login token
    assert (await client.get(me, token=vnc)).status == 401
    good = token_for(dave)
    head, payload, sig = good.split(".")
    tampered = f"{head}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{sig}"
    assert (await client.get(me, token=tampered)).status == 401
    forged = jwt.encode({"sub": dave["id"], "typ": "login", "jti": "x", "iat": 0,
                         "exp": 2**40, "role": "admin"}, "not-the-secret-but-just-as-long-as-the-real-one", algorithm="HS256")
    assert (await client.get(me, token=forged)).status == 401
    none_alg = jwt.encode({"sub": dave["id"], "typ": "login", "iat": 0, "exp": 2**40,
                           "jti": "00000000-0000-0000-0000-000000000000"}, None,
                          algorithm="none")
    assert (await client.get(me, token=none_alg)).status == 401
    for header in ("Basic abc", "Bearer", "Bearer " + "a" * 5000, "garbage"):
        r = await client.get(me, headers={"Authorization": header})
        assert r.status == 401, header
    assert (await client.get(me, token=good)).status == 200


@pytest_twisted.ensureDeferred
async def test_change_own_password_ends_older_tokens(client, db):
    erin = await make_user(db, "erin")
    other_device = token_for(erin)
    login = await client.post("/api/v1/auth/login", {"username": "erin", "password": PASSWORD})
    token = login.json["token"]
    new_password = "a much better password"
    client.secrets.add(new_password)
    wrong = await client.post("/api/v1/auth/password",
                              {"current_password": "nope", "new_password": new_password},
                              token=token)
    assert wrong.status == 403 and wrong.code == "invalid_credentials"
    short = await client.post("/api/v1/auth/password",
                              {"current_password": PASSWORD, "new_password": "short"},
                              token=token)
    assert short.status == 400 and "new_password" in short.json["error"]["message"]
    r = await client.post("/api/v1/auth/password",
                          {"current_password": PASSWORD, "new_password": new_password},
                          token=token)
    assert r.status == 200, r.body
    assert (await client.get("/api/v1/auth/me", token=r.json["token"])).status == 200
    assert (await client.get("/api/v1/auth/me", token=token)).status == 401
    assert (await client.get("/api/v1/auth/me", token=other_device)).status == 401
    old = await client.post("/api/v1/auth/login", {"username": "erin", "password": PASSWORD})
    assert old.status == 401
    ok = await client.post("/api/v1/auth/login", {"username": "erin", "password": new_password})
    assert ok.status == 200


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


@pytest_twisted.ensureDeferred
async def test_login_limit_is_per_address_and_account(client, db, ctx):
    """Issue 9 item 18: guessing at an account from one address must neither lock its
    owner out elsewhere nor lock out other users behind the attacker's address."""
    ctx.trusted_proxies = ip_networks("127.0.0.1")  # X-Forwarded-For names the client
    attacker, owner_addr = "198.51.100.66", "203.0.113.5"
    await make_user(db, "frank")
    await make_user(db, "grace")
    for _ in range(10):
        r = await client.post("/api/v1/auth/login", {"username": "frank", "password": "x"},
                              headers=_from(attacker))
        assert r.status == 401
    r = await client.post("/api/v1/auth/login", {"username": "frank", "password": PASSWORD},
                          headers=_from(attacker))
    assert r.status == 429 and r.code == "too_many_attempts"
    assert 1 <= int(r.header("Retry-After")) <= 60
    # frank, from his own address, is not locked out...
    ok = await client.post("/api/v1/auth/login", {"username": "frank", "password": PASSWORD},
                           headers=_from(owner_addr))
    assert ok.status == 200
    # ...nor is grace, behind the attacker's address
    ok = await client.post("/api/v1/auth/login", {"username": "grace", "password": PASSWORD},
                           headers=_from(attacker))
    assert ok.status == 200
    # the refusal is audited once for its window, with the limit that refused it
    again = await client.post("/api/v1/auth/login", {"username": "frank", "password": "x"},
                              headers=_from(attacker))
    assert again.status == 429
    rows = await db.query("SELECT actor_name, target_id, client_addr, success, details "
                          "FROM audit_log WHERE details->>'reason' = 'rate_limited'")
    assert rows == [("frank", "frank", attacker, False,
                     {"reason": "rate_limited", "scope": "account"})]


@pytest_twisted.ensureDeferred
async def test_one_address_spraying_many_accounts_hits_the_address_ceiling(client, db, ctx):
    ctx.trusted_proxies = ip_networks("127.0.0.1")
    clock = Clock()
    clock.advance(reactor.seconds())
    client.api.login_limiter = LoginRateLimiter(clock, max_failures=3, address_ceiling=8)
    await make_user(db, "heidi")
    for i in range(8):
        r = await client.post("/api/v1/auth/login", {"username": f"user{i}", "password": "x"},
                              headers=_from("198.51.100.9"))
        assert r.status == 401
    r = await client.post("/api/v1/auth/login", {"username": "heidi", "password": PASSWORD},
                          headers=_from("198.51.100.9"))
    assert r.status == 429
    ok = await client.post("/api/v1/auth/login", {"username": "heidi", "password": PASSWORD},
                           headers=_from("198.51.100.10"))
    assert ok.status == 200
    rows = await db.query("SELECT details->>'scope' FROM audit_log "
                          "WHERE details->>'reason' = 'rate_limited'")
    assert rows == [("address",)]


@pytest_twisted.ensureDeferred
async def test_rate_limit_window_passes_with_the_clock(client, db):
    """Time is the reactor's: a fake clock moved past the window lets logins through."""
    clock = Clock()
    clock.advance(reactor.seconds())
    client.api.login_limiter = LoginRateLimiter(clock)
    await make_user(db, "heidi")
    for _ in range(10):
        await client.post("/api/v1/auth/login", {"username": "heidi", "password": "x"})
    blocked = await client.post("/api/v1/auth/login", {"username": "heidi", "password": PASSWORD})
    assert blocked.status == 429
    clock.advance(61)
    ok = await client.post("/api/v1/auth/login", {"username": "heidi", "password": PASSWORD})
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_concurrent_guesses_cannot_pass_the_limit(client, db):
    await make_user(db, "ivan")
    results = await gather(*[
        client.post("/api/v1/auth/login", {"username": "ivan", "password": f"guess{i}"})
        for i in range(25)])
    statuses = sorted(r.status for r in results)
    assert statuses.count(401) == 10 and statuses.count(429) == 15, statuses


async def gather(*coros):
    from twisted.internet import defer

    return await defer.gatherResults([defer.Deferred.fromCoroutine(c) for c in coros])


@pytest_twisted.ensureDeferred
async def test_limits_and_audit_use_the_forwarded_address_behind_a_trusted_proxy(
        client, db, ctx):
    ctx.trusted_proxies = ip_networks("127.0.0.1")
    client.api.login_limiter = LoginRateLimiter(reactor, address_ceiling=10)
    await make_user(db, "judy")
    for i in range(10):
        r = await client.post("/api/v1/auth/login", {"username": f"u{i}", "password": "x"},
                              headers={"X-Forwarded-For": "198.51.100.7"})
        assert r.status == 401
    blocked = await client.post("/api/v1/auth/login", {"username": "judy", "password": PASSWORD},
                                headers={"X-Forwarded-For": "198.51.100.7"})
    assert blocked.status == 429
    # another client behind the same proxy is not locked out
    ok = await client.post("/api/v1/auth/login", {"username": "judy", "password": PASSWORD},
                           headers={"X-Forwarded-For": "198.51.100.8"})
    assert ok.status == 200
    rows = await db.query("SELECT DISTINCT client_addr FROM audit_log ORDER BY 1")
    assert [r[0] for r in rows] == ["198.51.100.7", "198.51.100.8"]
