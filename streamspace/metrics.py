"""Prometheus metrics: the series operators watch, with label sets bounded whatever
clients send.

Everything is defined here; the rest of the control plane reports through the small
functions below (`http_request`, `session_started`, `heartbeat_received`,
`websocket_opened`...). Nothing here does I/O at scrape time: values that come from the
database (agents by status, sessions by state) are snapshots refreshed off the scrape path
by `FleetRefresher`; the rest is counted in memory as it happens.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# -- HTTP ---------------------------------------------------------------------------------

# A client may send any token as a method; only these become label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "streamspace_http_requests_total",
    "HTTP requests served, by route template, method and status code",
    ["route", "method", "status"],
)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(code: int | None) -> str:
    return str(code) if isinstance(code, int) and 100 <= code <= 599 else "other"


def http_request(route: str, method: str, status: int | None) -> None:
    """Count one answered request. `route` must come from a fixed set (a route template,
    `static` or `unmatched`), never from the raw path."""
    HTTP_REQUESTS.labels(route=route, method=method_label(method),
                         status=status_label(status)).inc()


# Set by the web layer: maps (path, method) to a route template (a bounded set).
_route_of: Callable[[str, str], str] = lambda path, method: "unmatched"  # noqa: E731


def use_route_resolver(route_of: Callable[[str, str], str]) -> None:
    global _route_of
    _route_of = route_of


def http_request_refused(path: str, method: str, status: int) -> None:
    """A request answered before it reached the site (e.g. a body over the limit)."""
    try:
        route = _route_of(path, method)
    except Exception:
        route = "unmatched"
    http_request(route, method, status)


# -- logins -------------------------------------------------------------------------------

LOGIN_REFUSALS = Counter(
    "streamspace_login_refusals_total",
    "login attempts refused by the rate limit (429), by the limit that refused them",
    ["scope"],
)


def login_refused(scope: str) -> None:
    LOGIN_REFUSALS.labels(scope=scope if scope in ("account", "address") else "other").inc()


# -- agents and sessions (events) ---------------------------------------------------------

SESSION_STARTS = Histogram(
    "streamspace_session_start_seconds",
    "time from a start_session command's delivery to the agent's answer, by the agent's "
    "platform and outcome (ok/failed); the _count series give the start success rate",
    ["platform", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
HEARTBEAT_LATENCY = Histogram(
    "streamspace_agent_heartbeat_latency_seconds",
    "from the timestamp an agent put on a heartbeat to its arrival (includes any clock "
    "difference between the agent's machine and ours)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

MAX_PLATFORMS = 50  # label values beyond this are folded into "other"
_platforms: set[str] = set()


def _platform_label(platform: str | None) -> str:
    name = str(platform or "none")[:50]
    if name in _platforms:
        return name
    if len(_platforms) >= MAX_PLATFORMS:
        return "other"
    _platforms.add(name)
    return name


def session_started(platform: str | None, seconds: float, ok: bool) -> None:
    SESSION_STARTS.labels(platform=_platform_label(platform),
                          outcome="ok" if ok else "failed").observe(max(0.0, seconds))


# start_session commands in flight: command id -> (platform, first delivery time)
MAX_TRACKED_STARTS = 10_000
_starts: OrderedDict[str, tuple[str | None, float]] = OrderedDict()


def command_sent(command_id: str, command_type: str, platform: str | None,
                 now: float) -> None:
    """The hub delivered a command; start_session ones are timed until their answer
    (a redelivery keeps the first time)."""
    if command_type != "start_session" or command_id in _starts:
        return
    _starts[command_id] = (platform, now)
    while len(_starts) > MAX_TRACKED_STARTS:  # answers that never came (timeouts)
        _starts.popitem(last=False)


def command_answered(command_id: str, ok: bool, now: float) -> None:
    started = _starts.pop(command_id, None)
    if started is not None:
        session_started(started[0], now - started[1], ok)


def heartbeat_received(sent_at: str | None, now: float) -> None:
    """`sent_at` is the frame's ISO 8601 timestamp (wire.iso_utc)."""
    try:
        sent = datetime.fromisoformat(str(sent_at).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError, OverflowError, OSError):
        return
    HEARTBEAT_LATENCY.observe(max(0.0, now - sent))


# -- VNC tunnels (reported by streamspace.relay) --------------------------------------------

TUNNELS = Counter("streamspace_vnc_tunnels_total",
                  "VNC connections by outcome (linked = the viewer reached the session; "
                  "refused, agent_offline, agent_failed, timeout)", ["outcome"])
TUNNEL_BYTES = Counter("streamspace_vnc_bytes_total", "VNC bytes relayed", ["direction"])
TUNNELS_ACTIVE = Gauge("streamspace_vnc_tunnels_active", "VNC tunnels open now")
TUNNEL_SECONDS = Histogram("streamspace_vnc_tunnel_seconds", "VNC tunnel lifetimes",
                           buckets=(1, 10, 60, 300, 1800, 3600, 4 * 3600, 12 * 3600))

# -- WebSocket connections ------------------------------------------------------------------

WEBSOCKET_KINDS = ("agent", "tunnel", "vnc")
_websockets: dict[str, weakref.WeakSet] = {kind: weakref.WeakSet()
                                           for kind in (*WEBSOCKET_KINDS, "other")}


def websocket_kind(path: bytes | str) -> str:
    text = path.decode("latin-1") if isinstance(path, bytes) else str(path)
    if text.startswith("/api/v1/agent/connect"):
        return "agent"
    if text.startswith("/api/v1/agent/tunnel/"):
        return "tunnel"
    if text.startswith("/api/v1/vnc/"):
        return "vnc"
    return "other"


def websocket_opened(connection, path: bytes | str) -> None:
    """Count `connection` (a WebSocket protocol) as open until `websocket_closed`; a
    connection garbage-collected without that call stops counting too."""
    _websockets[websocket_kind(path)].add(connection)


def websocket_closed(connection) -> None:
    for live in _websockets.values():
        live.discard(connection)


# -- collectors: read at scrape time from memory only -------------------------------------

class _Live(Collector):
    """WebSocket connections by kind, and the database pool, as they are now."""

    def __init__(self) -> None:
        self.pool: Callable[[], dict[str, int]] | None = None

    def collect(self):
        ws = GaugeMetricFamily("streamspace_websocket_connections",
                               "open WebSocket connections by kind", labels=["kind"])
        for kind, live in _websockets.items():
            ws.add_metric([kind], len(live))
        yield ws
        usage = self.pool() if self.pool is not None else None
        if usage is not None:
            yield GaugeMetricFamily("streamspace_db_pool_size",
                                    "connections the database pool holds",
                                    value=usage["size"])
            pool = GaugeMetricFamily("streamspace_db_pool_connections",
                                     "database pool connections by state", labels=["state"])
            pool.add_metric(["busy"], usage["busy"])
            pool.add_metric(["idle"], usage["size"] - usage["busy"])
            yield pool
            yield GaugeMetricFamily("streamspace_db_pool_waiting",
                                    "queries waiting for a free pool connection",
                                    value=usage["waiting"])


class _Fleet(Collector):
    """The last snapshot of what the database says (refreshed by FleetRefresher)."""

    def __init__(self) -> None:
        self.snapshot: dict | None = None

    def collect(self):
        snap = self.snapshot
        if snap is None:
            return
        agents = GaugeMetricFamily("streamspace_agents", "agents by status",
                                   labels=["status"])
        for status, n in sorted(snap["agents"].items()):
            agents.add_metric([status], n)
        yield agents
        sessions = GaugeMetricFamily("streamspace_sessions", "sessions by state and platform",
                                     labels=["state", "platform"])
        for (state, platform), n in sorted(snap["sessions"].items()):
            sessions.add_metric([state, platform], n)
        yield sessions
        yield GaugeMetricFamily(
            "streamspace_agent_heartbeat_age_seconds",
            "seconds since the stalest online agent's last heartbeat (0 with none online)",
            value=snap["heartbeat_age"])
        yield GaugeMetricFamily(
            "streamspace_fleet_snapshot_timestamp_seconds",
            "when the agent and session gauges were last read from the database",
            value=snap["at"])


LIVE = _Live()
FLEET = _Fleet()
REGISTRY.register(LIVE)
REGISTRY.register(FLEET)


def watch_pool(usage: Callable[[], dict[str, int] | None]) -> None:
    """`usage()` -> {"size", "busy", "waiting"} (or None while not connected)."""
    LIVE.pool = usage


def render_latest() -> tuple[bytes, str]:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
