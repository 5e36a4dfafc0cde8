"""Reconnect delays: capped, jittered exponential backoff.

The cap is low on purpose (1.5 s): an agent must be back within 2 s of the control plane
returning, and a refused TCP connect costs nothing. Jitter (each delay drawn from the upper
half of its step) keeps a fleet of agents from reconnecting in lockstep after a restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable

MAX_DELAY = 1.5


def capped_backoff(initial: float = 0.1, cap: float = MAX_DELAY, factor: float = 2.0,
                   rand: Callable[[], float] = random.random) -> Callable[[int], float]:
    """A retry policy for ClientService: attempt n (1-based) -> seconds to wait."""

    def delay(attempt: int) -> float:
        step = min(cap, initial * factor ** max(0, min(attempt, 64) - 1))
        return step * (0.5 + 0.5 * rand())

    return delay
