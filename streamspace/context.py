"""What request handlers and domain services share: the database, configuration, clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamspace.db.pool import Database


@dataclass
class AppContext:
    reactor: Any
    db: Database
    jwt_secret: str
    public_url: str
    state_dir: Path
    token_lifetime: float = 12 * 3600.0
    default_max_sessions: int = 5
    command_timeout: float = 120.0
    agent_heartbeat_timeout: float = 30.0
    vnc_proxy_timeout: float = 300.0
    # reverse proxies whose X-Forwarded-For is believed (ipaddress networks)
    trusted_proxies: tuple = ()
    extras: dict[str, Any] = field(default_factory=dict)
