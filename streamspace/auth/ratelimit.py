"""Login throttling: at most N failed attempts per key (username, client address) per window.

In memory (one control plane process), clocked by the reactor. An attempt is counted when
it *starts* and forgiven only if it succeeds, so a burst of concurrent guesses cannot slip
past the limit while their password checks are still running.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW = 60.0
# Bound on remembered keys; stale ones are pruned first when it is reached.
MAX_KEYS = 100_000


class LoginRateLimiter:
    def __init__(self, clock, max_failures: int = DEFAULT_MAX_FAILURES,
                 window: float = DEFAULT_WINDOW) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self._hits: dict[str, deque[float]] = {}

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

    def retry_after(self, keys: Iterable[str]) -> int | None:
        """Seconds until another attempt is allowed for all `keys`, or None if allowed now."""
        now = self.clock.seconds()
        wait = 0.0
        for key in keys:
            hits = self._recent(key, now)
            if hits is not None and len(hits) >= self.max_failures:
                wait = max(wait, hits[len(hits) - self.max_failures] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def begin(self, keys: Iterable[str]) -> float:
        """Count an attempt against every key (as a failure until `succeeded`)."""
        now = self.clock.seconds()
        if len(self._hits) >= MAX_KEYS:
            self._prune(now)
        for key in keys:
            self._hits.setdefault(key, deque()).append(now)
        return now

    def succeeded(self, keys: Iterable[str], stamp: float) -> None:
        """Forgive the attempt started at `stamp` (it was not a failure)."""
        for key in keys:
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
        if len(self._hits) >= MAX_KEYS:  # still full of live keys: forget the oldest half
            for key in sorted(self._hits, key=lambda k: self._hits[k][-1])[: MAX_KEYS // 2]:
                del self._hits[key]
