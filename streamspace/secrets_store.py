"""Secrets kept in the state directory (dev mode): created once, 0600, reused after."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def read_or_create(path: Path, make=lambda: secrets.token_urlsafe(48)) -> tuple[str, bool]:
    """The secret stored at `path`, creating it 0600 if absent; (value, created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    value = make()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, True


def write_private(path: Path, content: str) -> None:
    """Write a file readable only by its owner (replacing any older one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)
