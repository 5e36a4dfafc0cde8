"""Login throttling per (client address, account), under a higher ceiling per address.

Failures are counted per pair, so an attacker guessing at an account from one address
cannot lock its owner out from another one, and a user behind the same address (a NAT, a
proxy) is not locked out by attempts on other accounts. A per-address ceiling, well above
the per-pair limit, still stops one address from spraying guesses over many accounts.

In memory (one control plane process), clocked by the reactor. An attempt is counted when
it *starts* and forgiven only if it succeeds, so a burst of concurrent guesses cannot slip
past the limit while their password checks are still running.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

DEFAULT_MAX_FAILURES = 10  # per (address, account) per window
DEFAULT_ADDRESS_CEILING = 100  # per address, whatever the accounts, per window
DEFAULT_WINDOW = 60.0
# Bound on remembered keys; stale ones are pruned first when it is reached.
MAX_KEYS = 100_000


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
        return ((f"pair:{address}\x00{account}", self.max_failures, "account"),
                (f"addr:{address}", self.address_ceiling, "address"))

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
        if len(self._hits) >= MAX_KEYS:  # still full of live keys: forget the oldest half
            for key in sorted(self._hits, key=lambda k: self._hits[k][-1])[: MAX_KEYS // 2]:
                del self._hits[key]
        if len(self._refused_at) >= MAX_KEYS:
            self._refused_at.clear()
