"""An agent's capacity, validated the same way wherever it arrives (the agent's `register`
frame, `POST /api/v1/agents`, `POST /api/v1/agents/register`).

A malformed capacity (a string, `{"max_sessions": "x"}`) once reached the scheduler and
stopped placement for every session; so it is refused at the door with a message naming
the field, and what is stored always has the same three numeric keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# field -> (whole numbers only, upper bound); 0 means unlimited for each
LIMITS: dict[str, tuple[bool, float]] = {
    "max_sessions": (True, 1_000_000),
    "max_cpu": (False, 1_000_000.0),
    "max_memory_gb": (False, 1_000_000_000.0),
}


def parse_capacity(obj: Any) -> dict[str, int | float]:
    """`obj` as a clean capacity `{max_sessions, max_cpu, max_memory_gb}` (missing keys
    are 0 = unlimited); ValueError with a readable message otherwise."""
    if obj is None:
        obj = {}
    if not isinstance(obj, Mapping):
        raise ValueError("capacity must be an object "
                         "{max_sessions, max_cpu, max_memory_gb}")
    unknown = sorted(str(k)[:64] for k in obj if k not in LIMITS)
    if unknown:
        raise ValueError(f"capacity: unknown field(s) {', '.join(unknown[:5])}; "
                         f"allowed: {', '.join(LIMITS)}")
    out: dict[str, int | float] = {}
    for name, (whole, high) in LIMITS.items():
        value = obj.get(name, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"capacity.{name} must be a number (0 = unlimited)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"capacity.{name} must be a finite number")
        if not 0 <= value <= high:
            raise ValueError(f"capacity.{name} must be between 0 and {high:g}")
        if whole and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"capacity.{name} must be a whole number")
        out[name] = int(value) if whole else float(value)
    return out
