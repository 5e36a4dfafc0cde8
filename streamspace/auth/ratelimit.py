"""Login throttling per (client address, account), under a higher ceiling per address.

Failures are counted per pair, so an attacker guessing at an account from one address
cannot lock its owner out from another one, and a user behind the same address (a NAT, a
proxy) is not locked out by attempts on other accounts. A per-address ceiling, well above
the per-pair limit, still stops one address from spraying guesses over many accounts.

An IPv6 client is counted by its /64, the smallest block a site or a host is routinely
given: one machine can use a whole /64, so counting per /128 would give it unlimited
addresses (IPv4-mapped IPv6 addresses count as their IPv4 address).

In memory (one control plane process), clocked by the reactor. An attempt is counted when
it *starts* and forgiven only if it succeeds, so a burst of concurrent guesses cannot slip
past the limit while their password checks are still running. Memory is bounded
(MAX_KEYS); when it is full of live counters, the ones with the fewest failures go first,
so flooding it with fresh keys cannot wipe the counters that are refusing someone.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from dataclasses import dataclass

DEFAULT_MAX_FAILURES = 10  # per (address, account) per window
DEFAULT_ADDRESS_CEILING = 100  # per address, whatever the accounts, per window
DEFAULT_WINDOW = 60.0
# Bound on remembered keys; stale ones are pruned first when it is reached.
MAX_KEYS = 100_000
IPV6_PREFIX = 64


def client_key(address: str) -> str:
    """What one client is counted as: its IPv4 address, its IPv6 /64, or the text as is
    (not an IP address, e.g. a Unix-socket peer without X-Forwarded-For)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Refusal:
    retry_after: int  # whole seconds, at least 1
    scope: str  # "account" (this address and account) or "address" (the ceiling)
    first: bool  # the first refusal for this key in its window (the one to audit)


class LoginRateLimiter:
    def __init__(self, clock, max_failures: int = DEFAULT_MAX_FAILURES,
                 window: float = DEFAULT_WINDOW,
                 address_ceiling: int = DEFAULT_ADDRESS_CEILING) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.address_ceiling = address_ceiling
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._refused_at: dict[str, float] = {}  # key -> when its refusal was last reported

    def _keys(self, address: str, account: str) -> tuple[tuple[str, int, str], ...]:
        client = client_key(address)
        return ((f"pair:{client}\x00{account}", self.max_failures, "account"),
                (f"addr:{client}", self.address_ceiling, "address"))

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def refusal(self, address: str, account: str) -> Refusal | None:
        """Why another attempt for `account` from `address` is refused now, or None."""
        now = self.clock.seconds()
        worst: tuple[float, str, str] | None = None
        for key, limit, scope in self._keys(address, account):
            hits = self._recent(key, now)
            if hits is not None and len(hits) >= limit:
                wait = hits[len(hits) - limit] + self.window - now
                if worst is None or wait > worst[0]:
                    worst = (wait, scope, key)
        if worst is None:
            return None
        wait, scope, key = worst
        last = self._refused_at.get(key)
        first = last is None or last <= now - self.window
        if first:
            self._refused_at[key] = now
        return Refusal(max(1, math.ceil(wait)), scope, first)

    def begin(self, address: str, account: str) -> float:
        """Count an attempt (as a failure until `succeeded`)."""
        now = self.clock.seconds()
        if len(self._hits) >= MAX_KEYS or len(self._refused_at) >= MAX_KEYS:
            self._prune(now)
        for key, _, _ in self._keys(address, account):
            self._hits.setdefault(key, deque()).append(now)
        return now

    def succeeded(self, address: str, account: str, stamp: float) -> None:
        """Forgive the attempt started at `stamp` (it was not a failure)."""
        for key, _, _ in self._keys(address, account):
            hits = self._hits.get(key)
            if hits is None:
                continue
            try:
                hits.remove(stamp)
            except ValueError:
                pass
            if not hits:
                del self._hits[key]

    def _prune(self, now: float) -> None:
        for key in list(self._hits):
            self._recent(key, now)
        for key, at in list(self._refused_at.items()):
            if at <= now - self.window:
                del self._refused_at[key]
        if len(self._hits) >= MAX_KEYS:
            # Still full of live counters: forget half, those with the fewest failures
            # first (oldest first among equals). A counter near its limit costs an
            # attacker many failures to build; a flood of fresh keys costs one each and
            # is what goes.
            ranked = sorted(self._hits, key=lambda k: (len(self._hits[k]), self._hits[k][-1]))
            for key in ranked[: MAX_KEYS // 2]:
                del self._hits[key]
        if len(self._refused_at) >= MAX_KEYS:
            # only decides which refusal is audited: keep those whose counter survived
            for key in [k for k in self._refused_at if k not in self._hits]:
                del self._refused_at[key]
            if len(self._refused_at) >= MAX_KEYS:
                self._refused_at.clear()
