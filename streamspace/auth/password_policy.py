"""The password policy, applied wherever a password is set (account creation, an admin
reset, a user's own change, ADMIN_PASSWORD), never at login: at least 12 characters, at
most 1024, and not the username.
"""

from __future__ import annotations

MIN_LENGTH = 12
MAX_LENGTH = 1024


def password_problem(password: str, username: str | None) -> str | None:
    """Why `password` is not acceptable for `username`, or None when it is."""
    if len(password) < MIN_LENGTH:
        return f"the password must be at least {MIN_LENGTH} characters long"
    if len(password) > MAX_LENGTH:
        return f"the password must be at most {MAX_LENGTH} characters long"
    if username and password.strip().casefold() == username.strip().casefold():
        return "the password must not be the username"
    return None
