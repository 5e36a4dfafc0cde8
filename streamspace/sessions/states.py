"""The session state machine: every state, every allowed move, every timeout.

Closed by construction: each transitional state has a way forward and a deadline after
which the session becomes `failed` with a reason, so nothing waits forever.
"""

from __future__ import annotations

PENDING = "pending"
SCHEDULED = "scheduled"
STARTING = "starting"
RUNNING = "running"
HIBERNATING = "hibernating"
HIBERNATED = "hibernated"
WAKING = "waking"
TERMINATING = "terminating"
TERMINATED = "terminated"
FAILED = "failed"
UNREACHABLE = "unreachable"  # its agent went offline (the seed's "degraded")

ALL_STATES = (PENDING, SCHEDULED, STARTING, RUNNING, HIBERNATING, HIBERNATED, WAKING,
              TERMINATING, TERMINATED, FAILED, UNREACHABLE)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({SCHEDULED, FAILED, TERMINATING, TERMINATED}),
    SCHEDULED: frozenset({STARTING, FAILED, TERMINATING, UNREACHABLE}),
    STARTING: frozenset({RUNNING, FAILED, TERMINATING, UNREACHABLE}),
    RUNNING: frozenset({HIBERNATING, TERMINATING, FAILED, UNREACHABLE}),
    # back to RUNNING when the agent could not hibernate it (the session still runs)
    HIBERNATING: frozenset({HIBERNATED, RUNNING, FAILED, TERMINATING, UNREACHABLE}),
    HIBERNATED: frozenset({WAKING, TERMINATING, TERMINATED}),
    WAKING: frozenset({RUNNING, FAILED, TERMINATING, UNREACHABLE}),
    TERMINATING: frozenset({TERMINATED, FAILED}),
    UNREACHABLE: frozenset({RUNNING, HIBERNATED, FAILED, TERMINATING, TERMINATED}),
    FAILED: frozenset({TERMINATING, TERMINATED}),
    TERMINATED: frozenset(),
}

# States a user can ask for through PATCH, and the state each request moves through.
USER_REQUESTS: dict[str, dict[str, str]] = {
    "hibernated": {RUNNING: HIBERNATING},
    "running": {HIBERNATED: WAKING},
}

# How long a session may stay in a transitional state before it fails (seconds).
TRANSITIONAL_TIMEOUTS: dict[str, float] = {
    PENDING: 300.0,
    SCHEDULED: 300.0,
    STARTING: 300.0,
    HIBERNATING: 120.0,
    WAKING: 300.0,
    TERMINATING: 120.0,
}

# Sessions in these states count against a user's concurrent-session limit and an
# agent's capacity.
ACTIVE_STATES = frozenset({PENDING, SCHEDULED, STARTING, RUNNING, HIBERNATING, WAKING,
                           UNREACHABLE})
FINAL_STATES = frozenset({TERMINATED})


class InvalidTransition(ValueError):
    """A move the state machine does not allow; the message can be shown to a user."""


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def check_move(current: str, target: str) -> None:
    if not can_move(current, target):
        raise InvalidTransition(f"a session cannot go from `{current}` to `{target}`")


def requested_transition(current: str, requested: str) -> str:
    """The transitional state a user's PATCH {state: requested} moves a session into."""
    moves = USER_REQUESTS.get(requested)
    if moves is None:
        raise InvalidTransition(
            f"state must be one of {', '.join(sorted(USER_REQUESTS))}, not `{requested}`")
    if current not in moves:
        raise InvalidTransition(
            f"cannot set a `{current}` session to `{requested}` "
            f"(only from: {', '.join(sorted(moves))})")
    return moves[current]
