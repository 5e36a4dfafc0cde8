"""Per-agent tokens: 256 random bits, shown once, stored as a SHA-256 hash.

The tokens are high-entropy, so a fast hash is enough (no argon2): nobody can brute-force
2^256 candidates, and a plain digest lets the hub check a token in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 512


def generate() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def verify(token: str | None, stored_hash: str | None) -> bool:
    """True when `token` matches `stored_hash`; constant-time, False for missing values."""
    if not token or not stored_hash or len(token) > MAX_TOKEN_LENGTH:
        return False
    return hmac.compare_digest(hash_token(token), stored_hash)
