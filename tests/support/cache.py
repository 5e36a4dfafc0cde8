"""Where tests keep expensive, reusable artefacts: outside the repository, across runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$STREAMSPACE_CACHE_DIR`, else `$XDG_CACHE_HOME/streamspace` (`~/.cache/streamspace`)."""
    explicit = os.environ.get("STREAMSPACE_CACHE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamspace"
    path.mkdir(parents=True, exist_ok=True)
    return path
