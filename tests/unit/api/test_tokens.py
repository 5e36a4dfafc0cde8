"""Login tokens, agent tokens and the login rate limiter (no database, no reactor)."""

from __future__ import annotations

import jwt
import pytest
from twisted.internet.task import Clock

from streamspace.auth import agent_tokens, tokens
from streamspace.auth.ratelimit import LoginRateLimiter

SECRET = "s" * 40


def test_login_token_round_trip_and_claims():
    token, claims = tokens.issue_login(SECRET, user_id="u1", role="admin", now=1000.1234,
                                       lifetime=60)
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert raw["typ"] == "login" and raw["sub"] == "u1" and raw["role"] == "admin"
    assert raw["iat"] == 1000.123 and raw["exp"] == pytest.approx(1060.123)
    decoded = tokens.decode(SECRET, token, expected_typ="login", now=1059)
    assert decoded == claims


@pytest.mark.parametrize("now, message", [(1060.2, "token expired"), (5000, "token expired")])
def test_expiry_uses_the_given_clock(now, message):
    token, _ = tokens.issue_login(SECRET, user_id="u1", role="user", now=1000, lifetime=60)
    with pytest.raises(tokens.TokenInvalid, match=message):
        tokens.decode(SECRET, token, expected_typ="login", now=now)


def test_other_kinds_wrong_keys_and_garbage_are_refused():
    vnc, _ = tokens.issue(SECRET, typ="vnc", sub="u1", now=0, lifetime=60, session_id="s")
    with pytest.raises(tokens.TokenInvalid, match="wrong kind"):
        tokens.decode(SECRET, vnc, expected_typ="login", now=1)
    assert tokens.decode(SECRET, vnc, expected_typ="vnc", now=1).extra == {"session_id": "s"}
    login, _ = tokens.issue_login(SECRET, user_id="u1", role="user", now=0, lifetime=60)
    with pytest.raises(tokens.TokenInvalid):
        tokens.decode("t" * 40, login, expected_typ="login", now=1)
    for bad in ("", "x", "a.b.c", "x" * 5000,
                jwt.encode({"sub": "u", "typ": "login"}, SECRET, algorithm="HS256"),
                jwt.encode({"sub": 1, "typ": "login", "jti": "j", "iat": 0, "exp": 9},
                           SECRET, algorithm="HS256"),
                jwt.encode({"sub": "u", "typ": "login", "jti": "not-a-uuid", "iat": 0,
                            "exp": 9}, SECRET, algorithm="HS256"),
                jwt.encode({"sub": "u", "typ": "login", "jti": "x", "iat": 0, "exp": 9},
                           "k" * 64, algorithm="HS512")):
        with pytest.raises(tokens.TokenInvalid):
            tokens.decode(SECRET, bad, expected_typ="login", now=1)


def test_agent_tokens():
    token = agent_tokens.generate()
    assert len(token) >= 43 and token != agent_tokens.generate()
    stored = agent_tokens.hash_token(token)
    assert len(stored) == 64 and token not in stored
    assert agent_tokens.verify(token, stored)
    assert not agent_tokens.verify(token + "x", stored)
    assert not agent_tokens.verify(None, stored)
    assert not agent_tokens.verify(token, None)
    assert not agent_tokens.verify("x" * 10_000, stored)


def test_rate_limiter_window_and_forgiveness():
    clock = Clock()
    limiter = LoginRateLimiter(clock, max_failures=3, window=60, address_ceiling=5)
    for _ in range(3):
        assert limiter.refusal("10.0.0.1", "a") is None
        limiter.begin("10.0.0.1", "a")
        clock.advance(10)
    refusal = limiter.refusal("10.0.0.1", "a")
    # the first failure leaves the window at t=60; this refusal is the one to audit
    assert (refusal.retry_after, refusal.scope, refusal.first) == (30, "account", True)
    assert limiter.refusal("10.0.0.1", "a").first is False
    assert limiter.refusal("10.0.0.2", "a") is None  # the account, from elsewhere
    assert limiter.refusal("10.0.0.1", "b") is None  # another account, same address
    limiter.begin("10.0.0.1", "b")
    limiter.begin("10.0.0.1", "c")
    refusal = limiter.refusal("10.0.0.1", "d")  # 5 failures: the address ceiling
    assert refusal.scope == "address" and refusal.first
    clock.advance(30)
    assert limiter.refusal("10.0.0.1", "a") is None
    stamp = limiter.begin("10.0.0.1", "a")
    limiter.succeeded("10.0.0.1", "a", stamp)  # a success does not count
    assert len(limiter._hits["pair:10.0.0.1\x00a"]) == 2


def test_rate_limiter_forgets_stale_keys(monkeypatch):
    from streamspace.auth import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_KEYS", 10)
    clock = Clock()
    limiter = LoginRateLimiter(clock, max_failures=3, window=60)
    for i in range(25):
        limiter.begin("10.0.0.1", f"user{i}")
        clock.advance(1)
    assert len(limiter._hits) <= 10
    clock.advance(120)
    limiter.begin("10.0.0.2", "new")
    limiter.begin("10.0.0.3", "x")
    assert len(limiter._hits) <= 10
