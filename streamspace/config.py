"""Control-plane configuration: `twistd streamspace` options with the seed's env fallbacks."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from streamspace_common.settings import (
    Setting,
    build_options_class,
    log_level,
    non_negative_int,
    parse_duration,
    port_number,
    positive_duration,
    positive_int,
    text,
)

MIN_JWT_SECRET = 32


def ip_networks(text: str) -> tuple:
    """`10.0.0.0/8, 192.168.1.5` -> networks (empty text -> none)."""
    out = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(out)


SETTINGS: list[Setting] = [
    Setting("port", "PORT", "8080", "HTTP port for the API, WebSockets and UI", port_number),
    Setting("interface", "LISTEN_ADDRESS", "0.0.0.0", "address to listen on"),
    Setting("public-url", "PUBLIC_URL", None,
            "URL users reach the control plane at (origin checks, links); "
            "default http://localhost:PORT"),
    Setting("database-url", "DATABASE_URL", None,
            "PostgreSQL URL (postgresql://user:pass@host:port/db); overrides DB_*", secret=True),
    Setting("db-host", "DB_HOST", None,
            "PostgreSQL host; with no database configured an embedded one is started"),
    Setting("db-port", "DB_PORT", "5432", "PostgreSQL port", port_number),
    Setting("db-name", "DB_NAME", "streamspace", "PostgreSQL database name"),
    Setting("db-user", "DB_USER", None, "PostgreSQL user"),
    Setting("db-password", "DB_PASSWORD", None, "PostgreSQL password", secret=True),
    Setting("db-pool-size", "DB_POOL_SIZE", "5", "PostgreSQL connections in the pool",
            positive_int),
    Setting("jwt-secret", "JWT_SECRET", None,
            f"JWT signing secret, at least {MIN_JWT_SECRET} characters "
            "(generated and kept in the state directory in dev mode)", secret=True),
    Setting("state-dir", "STREAMSPACE_STATE_DIR", "./.streamspace",
            "directory for the embedded database, generated secrets and credentials"),
    Setting("admin-password", "ADMIN_PASSWORD", None,
            "password of the initial `admin` account (generated and saved if unset)",
            secret=True),
    Setting("log-level", "LOG_LEVEL", "info", "debug, info, warn or error", log_level),
    Setting("agent-heartbeat-timeout", "AGENT_HEARTBEAT_TIMEOUT", "30s",
            "silence after which an agent is marked offline", positive_duration),
    Setting("command-timeout", "COMMAND_TIMEOUT", "120s",
            "time an agent command may take before it becomes `timeout`", positive_duration),
    Setting("vnc-proxy-timeout", "VNC_PROXY_TIMEOUT", "5m",
            "a VNC tunnel with no traffic either way is closed after this", positive_duration),
    Setting("max-viewers-per-session", "MAX_VIEWERS_PER_SESSION", "10",
            "VNC viewers one session may have at once (more are refused with close code "
            "4029)", positive_int),
    Setting("max-viewers-per-user", "MAX_VIEWERS_PER_USER", "20",
            "VNC viewers one user may have open at once, over all sessions (more are "
            "refused with close code 4029)", positive_int),
    Setting("token-lifetime", "JWT_LIFETIME", "12h", "lifetime of login tokens",
            positive_duration),
    Setting("max-sessions-per-user", "MAX_SESSIONS_PER_USER", "5",
            "concurrent sessions a user may have (admins can override per user)",
            non_negative_int),
    Setting("trusted-proxies", "TRUSTED_PROXIES", "",
            "comma-separated addresses/networks of reverse proxies whose X-Forwarded-For "
            "names the client (login rate limits and audit use it); none by default",
            ip_networks),
    Setting("session-idle-timeout", "SESSION_IDLE_TIMEOUT", "0",
            "hibernate running sessions without keyboard/mouse input for this long "
            "(0 = never; a template's idle timeout wins)", parse_duration),
]

FLAGS: list[tuple[str, str | None, str]] = [
    ("migrate", "STREAMSPACE_MIGRATE", "apply pending schema migrations at start-up"),
    ("migrate-only", None, "apply pending schema migrations, then exit"),
    ("local-agent", "STREAMSPACE_LOCAL_AGENT",
     "dev mode: also run a `local` agent on this machine (provisioned automatically)"),
    ("dev", "STREAMSPACE_DEV",
     "development mode (implied by the embedded database): generated secrets, auto-migrate"),
]


def _validate(opts: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    url = opts["database_url"]
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("postgres", "postgresql") or not parsed.hostname:
            problems.append(
                "DATABASE_URL: expected postgresql://user:password@host:port/dbname")
    elif opts["db_host"] and not opts["db_user"]:
        problems.append("DB_USER: required when DB_HOST is set")
    secret = opts["jwt_secret"]
    if secret is not None and len(secret) < MIN_JWT_SECRET and not is_dev(opts):
        problems.append(
            f"JWT_SECRET: must be at least {MIN_JWT_SECRET} characters "
            f"(got {len(secret)}); generate one with `openssl rand -base64 48`")
    if secret is None and not is_dev(opts):
        problems.append(
            "JWT_SECRET: required with an external database "
            "(or pass --dev to generate one in the state directory)")
    public = opts["public_url"]
    if public:
        p = urlparse(public)
        if p.scheme not in ("http", "https") or not p.netloc:
            problems.append("PUBLIC_URL: expected http(s)://host[:port]")
    return problems


def uses_embedded_database(opts: Mapping[str, Any]) -> bool:
    return not opts["database_url"] and not opts["db_host"]


def is_dev(opts: Mapping[str, Any]) -> bool:
    return bool(opts["dev"]) or uses_embedded_database(opts)


ServerOptions = build_options_class(
    SETTINGS,
    FLAGS,
    _validate,
    doc="Run the StreamSpace control plane (REST API, agent hub, VNC proxy, UI).",
    program_name="streamspace",
)


def public_url(opts: Mapping[str, Any]) -> str:
    return (opts["public_url"] or f"http://localhost:{opts['port']}").rstrip("/")


__all__ = ["ServerOptions", "SETTINGS", "uses_embedded_database", "is_dev", "public_url", "text"]
