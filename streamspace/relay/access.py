"""Who may watch a session: one rule, applied when a viewer connects and again, while it
watches, to the database's current view of the account and the session.

A VNC token names its viewer, the viewer's role when it was issued, and when it was
issued. It stops being good (unused or in use) when the account is disabled or deleted,
when its password changes (`tokens_valid_after` moves past the token), when its role
changes, when the viewer no longer owns the session and is not an admin, or when the
session stops running.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamspace.auth import tokens
from streamspace.sessions import states

VNC_TOKEN_TYP = "vnc"
VNC_TOKEN_LIFETIME = 60.0

# Close codes a viewer may see (the reason says more; docs/protocol.md lists them)
CLOSE_DENIED = 4001  # token missing/invalid/expired/used, wrong owner, bad origin, revoked
CLOSE_NOT_RUNNING = 4009
CLOSE_TOO_MANY = 4029  # MAX_VIEWERS_PER_SESSION / MAX_VIEWERS_PER_USER reached
CLOSE_UNAVAILABLE = 4503
CLOSE_TIMEOUT = 4504
CLOSE_GOING_AWAY = 1001

# iat and tokens_valid_after are both the control plane's clock at millisecond precision
_SAME_INSTANT = 1e-6


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str
    outcome: str = "refused"  # the metrics label


@dataclass(frozen=True)
class Grant:
    """What a viewer was allowed when it connected (re-checked while it watches)."""

    session_id: str
    agent_id: str
    viewer_id: str
    viewer_name: str
    role: str
    issued_at: float
    client_addr: str = ""


def issue_token(secret: str, now: float, user_id: str, role: str, session_id: str
                ) -> tuple[str, float]:
    """A single-use VNC token for `user_id` (whose role is `role` now) and one session:
    (token, expiry)."""
    token, claims = tokens.issue(secret, typ=VNC_TOKEN_TYP, sub=user_id, role=role, now=now,
                                 lifetime=VNC_TOKEN_LIFETIME, sid=session_id)
    return token, claims.exp


def check(row: dict | None, viewer_id: str, role: str | None, issued_at: float
          ) -> Refusal | None:
    """None if `viewer_id` (holding a token issued at `issued_at` for `role`) may watch the
    session `row` describes now (db.vnc.viewer_target / viewers_now), else why not."""
    if row is None or row.get("state") is None:
        return Refusal(CLOSE_DENIED, "no such session")
    viewer = row.get("viewer")
    if viewer is None or viewer["disabled"]:
        return Refusal(CLOSE_DENIED, "this account no longer exists or is disabled")
    if issued_at + _SAME_INSTANT < viewer["tokens_valid_after"]:
        return Refusal(CLOSE_DENIED, "the VNC token is no longer valid "
                                     "(the account's password or status changed)")
    if role != viewer["role"]:
        return Refusal(CLOSE_DENIED, "the VNC token is no longer valid (the account's role "
                                     "changed)")
    if row["owner_id"] != viewer_id and viewer["role"] != "admin":
        return Refusal(CLOSE_DENIED, "no such session")
    if row["state"] != states.RUNNING:
        return Refusal(CLOSE_NOT_RUNNING, f"the session is {row['state']}, not running")
    return None
