"""`Authorization: Bearer <value>` parsing, shared by every endpoint that takes a credential
(login tokens, agent tokens, tunnel secrets)."""

from __future__ import annotations


def parse_bearer(header: str | bytes | None) -> str | None:
    """The credential of a Bearer header; None when absent or of another scheme."""
    if not header:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value
