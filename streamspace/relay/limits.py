"""How many viewers a session and a user may have at once (MAX_VIEWERS_PER_SESSION,
MAX_VIEWERS_PER_USER).

A viewer holds its place from the moment its WebSocket opens (before the agent is asked
for a tunnel) until its tunnel ends, so a burst cannot overshoot the limits while tunnels
are still being opened. Counts are per control-plane process.
"""

from __future__ import annotations

from collections import Counter


class ViewerLimits:
    def __init__(self, per_session: int, per_user: int) -> None:
        self.per_session = per_session
        self.per_user = per_user
        self.sessions: Counter[str] = Counter()
        self.users: Counter[str] = Counter()

    def admit(self, session_id: str, user_id: str) -> str | None:
        """Take a place for this viewer; None if admitted, else why not."""
        if self.sessions[session_id] >= self.per_session:
            return (f"this session already has {self.sessions[session_id]} viewers "
                    f"(MAX_VIEWERS_PER_SESSION={self.per_session})")
        if self.users[user_id] >= self.per_user:
            return (f"you already have {self.users[user_id]} viewers open "
                    f"(MAX_VIEWERS_PER_USER={self.per_user})")
        self.sessions[session_id] += 1
        self.users[user_id] += 1
        return None

    def release(self, session_id: str, user_id: str) -> None:
        for counts, key in ((self.sessions, session_id), (self.users, user_id)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]  # bounded by live viewers
