"""The session state machine: every state, every allowed move, every timeout.

Closed by construction: each transitional state has a way forward and a deadline after
which the session becomes `failed` with a reason, so nothing waits forever. The diagram
and what each timeout does are in docs/operations.md ("Session states").
"""

from __future__ import annotations

from dataclasses import dataclass

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
STOPPED = "stopped"  # its application ended by itself (e.g. `exit` in a terminal)
UNREACHABLE = "unreachable"  # its agent went offline (the seed's "degraded")

ALL_STATES = (PENDING, SCHEDULED, STARTING, RUNNING, HIBERNATING, HIBERNATED, WAKING,
              TERMINATING, TERMINATED, FAILED, STOPPED, UNREACHABLE)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({SCHEDULED, FAILED, TERMINATING, TERMINATED}),
    SCHEDULED: frozenset({STARTING, FAILED, TERMINATING, UNREACHABLE}),
    STARTING: frozenset({RUNNING, FAILED, STOPPED, TERMINATING, UNREACHABLE}),
    # HIBERNATED directly: the agent reports it hibernated (a hibernate whose answer was
    # lost); STOPPED: the application exited
    RUNNING: frozenset({HIBERNATING, HIBERNATED, TERMINATING, FAILED, STOPPED, UNREACHABLE}),
    # back to RUNNING when the agent could not hibernate it (the session still runs)
    HIBERNATING: frozenset({HIBERNATED, RUNNING, FAILED, TERMINATING, UNREACHABLE}),
    # RUNNING directly: the agent reports it running (a wake whose answer was lost);
    # FAILED: the agent no longer has it
    HIBERNATED: frozenset({WAKING, RUNNING, FAILED, TERMINATING, TERMINATED}),
    # back to HIBERNATED when the agent could not wake it (its data is still there)
    WAKING: frozenset({RUNNING, HIBERNATED, FAILED, STOPPED, TERMINATING, UNREACHABLE}),
    TERMINATING: frozenset({TERMINATED, FAILED}),
    UNREACHABLE: frozenset({RUNNING, HIBERNATED, FAILED, STOPPED, TERMINATING, TERMINATED}),
    # PENDING: restarted (same template, same agent and so the same home)
    FAILED: frozenset({PENDING, TERMINATING, TERMINATED}),
    STOPPED: frozenset({PENDING, TERMINATING, TERMINATED}),
    TERMINATED: frozenset(),
}

# States a user can ask for through PATCH, and the state each request moves through.
USER_REQUESTS: dict[str, dict[str, str]] = {
    "hibernated": {RUNNING: HIBERNATING},
    # wake a hibernated session; restart a stopped or failed one
    "running": {HIBERNATED: WAKING, STOPPED: PENDING, FAILED: PENDING},
}

# How long a session may stay in a transitional state before it fails (seconds). PENDING
# is the pending-wait: how long a session waits for an agent that can take it.
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
# Sessions that depend on a live agent connection: `unreachable` while it is away.
AGENT_BOUND = frozenset({SCHEDULED, STARTING, RUNNING, HIBERNATING, WAKING})
# Sessions that hold nothing on an agent's side that the control plane must keep.
ENDED_STATES = frozenset({TERMINATED, FAILED, STOPPED})
FINAL_STATES = frozenset({TERMINATED})
# The SSE stream of events ends when the session reaches one of these.
SETTLED_STATES = frozenset({RUNNING, FAILED, STOPPED, TERMINATED, HIBERNATED})


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


@dataclass(frozen=True)
class Outcome:
    """What a lifecycle command's answer does to its session.

    The move happens only from `expect` (a session deleted or moved meanwhile is left
    alone). `timeout` is the state when no answer came by the deadline; while the
    session is `unreachable` a hibernate or wake that timed out leaves it there, since
    only the agent, once back, can say whether it happened (its report decides).
    """

    expect: frozenset[str]
    success: str
    failure: str
    timeout: str
    what: str  # "the agent did not <what> the session"
    keep_unreachable: bool = False


OUTCOMES: dict[str, Outcome] = {
    "start_session": Outcome(frozenset({SCHEDULED, STARTING, UNREACHABLE}), RUNNING, FAILED,
                             FAILED, "start"),
    "wake_session": Outcome(frozenset({WAKING, UNREACHABLE}), RUNNING, HIBERNATED,
                            HIBERNATED, "wake", keep_unreachable=True),
    "hibernate_session": Outcome(frozenset({HIBERNATING, UNREACHABLE}), HIBERNATED, RUNNING,
                                 RUNNING, "hibernate", keep_unreachable=True),
    "stop_session": Outcome(frozenset({TERMINATING}), TERMINATED, FAILED, FAILED, "stop"),
}

# What the user's request sends to the agent, per transitional state.
REQUEST_COMMANDS: dict[str, str] = {
    HIBERNATING: "hibernate_session", WAKING: "wake_session", TERMINATING: "stop_session",
}
