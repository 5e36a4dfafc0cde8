"""Platform drivers, by the name PLATFORM gives them.

Each driver package or module exposes `build_driver(reactor, options, state_dir, capacity)`
(options: the parsed `twistd agent` options) and is imported only when chosen, so an agent
image without a platform's libraries still runs the others.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

DRIVERS: dict[str, str] = {
    "local": "agent.platforms.local",
    "docker": "agent.platforms.docker",
    "kubernetes": "agent.platforms.kubernetes",
}


def build_driver(name: str, reactor, options: Any, state_dir: Path, capacity):
    """The driver PLATFORM names, built from the agent's options."""
    module = importlib.import_module(DRIVERS[name])
    return module.build_driver(reactor, options, state_dir, capacity)
