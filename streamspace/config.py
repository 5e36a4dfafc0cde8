"""Control-plane configuration: `twistd streamspace` options with the seed's env fallbacks."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from streamspace.auth.password_policy import password_problem
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
MIN_METRICS_TOKEN = 16
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
            ipaddress.ip_network("::ffff:127.0.0.0/104"))


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


def host_port(text: str) -> tuple[str | None, int]:
    """`9100`, `127.0.0.1:9100`, `[::1]:9100` -> (host or None, port)."""
    value = str(text).strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (expected [host:]port)") from None
    number = port_number(port)
    if number == 0:
        raise ValueError("the port must not be 0")
    return (host or None), number


SETTINGS: list[Setting] = [
    Setting("port", "PORT", "8080", "HTTP(S) port for the API, WebSockets and UI",
            port_number),
    Setting("interface", "LISTEN_ADDRESS", None,
            "address to listen on (default: 127.0.0.1 in dev mode, 0.0.0.0 otherwise)"),
    Setting("listen-unix", "LISTEN_UNIX", None,
            "also serve on this Unix socket (mode 0660) for a reverse proxy on this machine; "
            "its requests are the proxy's (X-Forwarded-For names the client)"),
    Setting("listen-unix-group", "LISTEN_UNIX_GROUP", None,
            "group owning the LISTEN_UNIX socket (the reverse proxy's); default: ours"),
    Setting("public-url", "PUBLIC_URL", None,
            "URL users reach the control plane at (origin checks, links); "
            "default http(s)://localhost:PORT"),
    Setting("tls-cert", "TLS_CERT", None,
            "PEM certificate (chain) to serve HTTPS and WSS on PORT (with --tls-key)"),
    Setting("tls-key", "TLS_KEY", None, "PEM private key of --tls-cert"),
    Setting("metrics-address", "METRICS_ADDRESS", None,
            "serve /metrics only on this separate [host:]port (host default: LISTEN_ADDRESS), "
            "not on PORT", host_port),
    Setting("metrics-token", "METRICS_TOKEN", None,
            f"bearer token /metrics requires (at least {MIN_METRICS_TOKEN} characters); "
            "without it or METRICS_ADDRESS, /metrics is served only in dev mode",
            secret=True),
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
    if opts["interface"] is not None:
        try:
            ipaddress.ip_address(opts["interface"])
        except ValueError:
            problems.append(f"LISTEN_ADDRESS: {opts['interface']!r} is not an IP address")
    problems.extend(_tls_problems(opts))
    problems.extend(_unix_problems(opts))
    if opts["local_agent"] and is_dev(opts):
        covering = [str(n) for n in opts["trusted_proxies"] if covers_loopback(n)]
        if covering:
            problems.append(
                f"TRUSTED_PROXIES: {', '.join(covering)} includes loopback, which the local "
                "agent's sessions share: any session could name its own client address "
                "(X-Forwarded-For) and pass the login limits; let the reverse proxy connect "
                "over LISTEN_UNIX instead")
    metrics_at = opts["metrics_address"]
    if metrics_at is not None and metrics_at[1] == opts["port"]:
        hosts = {metrics_at[0] or listen_interface(opts), listen_interface(opts)}
        if len(hosts) == 1 or hosts & {"0.0.0.0", "::"}:
            problems.append("METRICS_ADDRESS: must not be the address of PORT")
    token = opts["metrics_token"]
    if token is not None and len(token) < MIN_METRICS_TOKEN:
        problems.append(f"METRICS_TOKEN: must be at least {MIN_METRICS_TOKEN} characters "
                        "(generate one with `openssl rand -hex 24`)")
    admin_password = opts["admin_password"]
    if admin_password is not None:
        problem = password_problem(admin_password, "admin")
        if problem:
            problems.append(f"ADMIN_PASSWORD: {problem}")
    return problems


def _tls_problems(opts: Mapping[str, Any]) -> list[str]:
    cert, key = opts["tls_cert"], opts["tls_key"]
    if bool(cert) != bool(key):
        return ["TLS_CERT/TLS_KEY: give both the certificate and its key, or neither"]
    problems = []
    for name, path in (("TLS_CERT", cert), ("TLS_KEY", key)):
        if path and not os.access(path, os.R_OK):
            problems.append(f"{name}: cannot read {path}")
    return problems


def _unix_problems(opts: Mapping[str, Any]) -> list[str]:
    path, group = opts["listen_unix"], opts["listen_unix_group"]
    problems = []
    if group is not None and not path:
        problems.append("LISTEN_UNIX_GROUP: only meaningful with LISTEN_UNIX")
    if group is not None:
        import grp

        try:
            grp.getgrnam(group)
        except KeyError:
            problems.append(f"LISTEN_UNIX_GROUP: no group named {group!r}")
    if path is not None:
        if not os.path.isabs(path):
            problems.append(f"LISTEN_UNIX: {path!r} must be an absolute path")
        elif len(path.encode()) > MAX_UNIX_PATH:
            problems.append(f"LISTEN_UNIX: longer than {MAX_UNIX_PATH} bytes")
        elif not os.path.isdir(os.path.dirname(path)):
            problems.append(f"LISTEN_UNIX: the directory {os.path.dirname(path)} does not exist")
    return problems


def covers_loopback(network) -> bool:
    """Whether a trusted network includes loopback addresses (127/8, ::1, or the IPv4-mapped
    loopback), which every process on this machine can connect from."""
    return any(network.version == loop.version and network.overlaps(loop) for loop in LOOPBACK)


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


def uses_tls(opts: Mapping[str, Any]) -> bool:
    return bool(opts["tls_cert"] and opts["tls_key"])


def listen_interface(opts: Mapping[str, Any]) -> str:
    """LISTEN_ADDRESS if given; else loopback in dev mode (generated secrets, an admin
    password printed on the terminal: nothing to offer the network), all interfaces
    otherwise."""
    if opts["interface"] is not None:
        return opts["interface"]
    return "127.0.0.1" if is_dev(opts) else "0.0.0.0"


def public_url(opts: Mapping[str, Any]) -> str:
    scheme = "https" if uses_tls(opts) else "http"
    return (opts["public_url"] or f"{scheme}://localhost:{opts['port']}").rstrip("/")


def local_url(opts: Mapping[str, Any]) -> str:
    """How a process on this machine (the dev-mode local agent) reaches the port."""
    interface = listen_interface(opts)
    ip = ipaddress.ip_address(interface)
    if ip.is_unspecified:
        host = "[::1]" if ip.version == 6 else "127.0.0.1"
    else:
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{'https' if uses_tls(opts) else 'http'}://{host}:{opts['port']}"


__all__ = ["ServerOptions", "SETTINGS", "uses_embedded_database", "is_dev", "public_url",
           "listen_interface", "local_url", "uses_tls", "covers_loopback", "text"]
