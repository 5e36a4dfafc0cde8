"""Login limits count what one client really controls, and survive floods of keys."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from streamspace.auth import ratelimit
from streamspace.auth.ratelimit import LoginRateLimiter, client_key


def _fail(limiter: LoginRateLimiter, address: str, account: str, times: int = 1) -> None:
    for _ in range(times):
        assert limiter.refusal(address, account) is None
        limiter.begin(address, account)


@pytest.mark.parametrize("address, key", [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),
    ("unix", "unix"),
])
def test_client_keys(address, key):
    assert client_key(address) == key


def test_an_ipv6_client_is_counted_by_its_slash_64():
    """Should-fix 13: one host can use every address of its /64; per /128 it would have
    unlimited guesses."""
    clock = Clock()
    limiter = LoginRateLimiter(clock, max_failures=3, address_ceiling=5)
    for host in ("::1", "::2", ":abcd::9"):
        _fail(limiter, f"2001:db8:1:2{host}", "alice")
    refusal = limiter.refusal("2001:db8:1:2::77", "alice")
    assert refusal is not None and refusal.scope == "account"
    assert limiter.refusal("2001:db8:1:3::1", "alice") is None  # another /64
    _fail(limiter, "2001:db8:1:2::5", "bob")
    _fail(limiter, "2001:db8:1:2::6", "carol")
    refusal = limiter.refusal("2001:db8:1:2::8", "dave")  # 5 failures from the /64
    assert refusal is not None and refusal.scope == "address"
    _fail(limiter, "::ffff:10.0.0.1", "erin", 3)  # IPv4-mapped: the IPv4 address
    assert limiter.refusal("10.0.0.1", "erin").scope == "account"


def test_a_flood_of_fresh_keys_does_not_wipe_a_counter_that_refuses(monkeypatch):
    """Should-fix 13: filling the limiter with one-failure keys from many addresses must
    not evict the counter that stops an attacker's guesses on an account."""
    monkeypatch.setattr(ratelimit, "MAX_KEYS", 50)
    clock = Clock()
    limiter = LoginRateLimiter(clock, max_failures=3, window=60)
    _fail(limiter, "198.51.100.66", "victim", 3)
    assert limiter.refusal("198.51.100.66", "victim") is not None
    for i in range(200):  # within the window: every key is live
        clock.advance(0.1)
        limiter.begin(f"10.{i // 250}.{i % 250}.1", f"user{i}")
    assert len(limiter._hits) <= 50
    refusal = limiter.refusal("198.51.100.66", "victim")
    assert refusal is not None and refusal.scope == "account"
