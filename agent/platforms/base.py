"""The platform driver interface and the value types commands carry.

The executor only talks to this interface, so a driver (local processes, Kubernetes, later
Docker or VMs) is swapped without touching the control channel. Errors a user should read
are `DriverError`s; their message goes into the command's `failed.reason` as is.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from streamspace_common.wire import SESSION_STATES

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DriverError(Exception):
    """A failure whose message is a sentence a user can read (it becomes `failed.reason`)."""


class CapacityError(DriverError):
    """The agent is full (MAX_SESSIONS, MAX_CPU or MAX_MEMORY would be exceeded)."""


@dataclass(frozen=True)
class VncEndpoint:
    """A TCP address of a session's VNC server, as a driver keeps it internally (never
    sent to the control plane: `vnc_connect` names the session, the driver answers)."""

    host: str
    port: int

    def client_endpoint(self, reactor, timeout: float = 10.0) -> IStreamClientEndpoint:
        return HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)


@dataclass(frozen=True)
class UserRef:
    id: str
    username: str

    @classmethod
    def from_json(cls, data: Any) -> UserRef:
        if not isinstance(data, Mapping):
            raise ValueError("user must be an object {id, username}")
        uid = str(data.get("id") or "")
        if not _SLUG.match(uid):
            raise ValueError("user.id must be a non-empty identifier")
        return cls(uid, str(data.get("username") or ""))


@dataclass(frozen=True)
class SessionTemplate:
    """The parts of a template a driver needs (the full template travels in the command)."""

    name: str
    cpu: float = 0.0
    memory_mb: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    persistent_home: bool = False
    platforms: Mapping[str, Any] = field(default_factory=dict)
    display_name: str = ""
    vnc_port: int = 0  # the port the template's image serves VNC on (0 = not given)

    @classmethod
    def from_json(cls, data: Any) -> SessionTemplate:
        if not isinstance(data, Mapping):
            raise ValueError("template must be an object")
        name = str(data.get("name") or "")
        if not _SLUG.match(name):
            raise ValueError("template.name must be a slug such as 'firefox-browser'")
        try:
            cpu = float(data.get("cpu") or 0)
            memory_mb = int(float(data.get("memory_mb") or 0))
        except (TypeError, ValueError):
            raise ValueError("template.cpu and template.memory_mb must be numbers") from None
        if cpu < 0 or memory_mb < 0:
            raise ValueError("template resources must not be negative")
        env = data.get("env") or {}
        if not isinstance(env, Mapping):
            raise ValueError("template.env must be an object")
        clean_env: dict[str, str] = {}
        for key, value in env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise ValueError(f"template.env has an invalid variable name {key!r}")
            text = value if isinstance(value, str) else str(value)
            if "\0" in text:
                raise ValueError(f"template.env {key} contains a NUL byte")
            clean_env[key] = text
        platforms = data.get("platforms") or {}
        if not isinstance(platforms, Mapping):
            raise ValueError("template.platforms must be an object")
        vnc_port = data.get("vnc_port") or 0
        if (not isinstance(vnc_port, int) or isinstance(vnc_port, bool)
                or not 0 <= vnc_port <= 65535):
            raise ValueError("template.vnc_port must be a port number")
        return cls(name=name, cpu=cpu, memory_mb=memory_mb, env=clean_env,
                   persistent_home=bool(data.get("persistent_home")), platforms=platforms,
                   display_name=str(data.get("display_name") or ""), vnc_port=vnc_port)

    def platform(self, name: str) -> Mapping[str, Any]:
        settings = self.platforms.get(name) or {}
        return settings if isinstance(settings, Mapping) else {}


# Session states a driver reports (register, heartbeat, list_sessions, session_status).
STARTING, RUNNING, HIBERNATED, STOPPED, FAILED = SESSION_STATES


@dataclass(frozen=True)
class SessionInfo:
    """A session the driver knows, in the state it really sees it (its cache of the
    process table, a Kubernetes watch, the Docker events stream).

    `list_sessions` reports sessions that are starting, running or hibernated (kept for a
    wake); `stopped`/`failed` travel in `session_status` when a session ends by itself.
    """

    session_id: str
    state: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"session_id": self.session_id, "state": self.state}
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class Capacity:
    """Limits the agent reports at registration (0 = unlimited)."""

    max_sessions: int = 0
    max_cpu: float = 0.0
    max_memory_gb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"max_sessions": self.max_sessions, "max_cpu": self.max_cpu,
                "max_memory_gb": self.max_memory_gb}


@dataclass(frozen=True)
class Usage:
    """Resources reserved by running sessions (their templates' cpu and memory)."""

    sessions: int = 0
    cpu: float = 0.0
    memory_gb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "cpu": round(self.cpu, 3),
                "memory_gb": round(self.memory_gb, 3)}


def check_capacity(capacity: Capacity, usage: Usage, template: SessionTemplate) -> None:
    """Refuse a start that would pass a limit, saying which one (shared by all drivers)."""
    if capacity.max_sessions and usage.sessions + 1 > capacity.max_sessions:
        raise CapacityError(
            f"this agent is full: it already runs {usage.sessions} of "
            f"{capacity.max_sessions} sessions (MAX_SESSIONS)")
    if capacity.max_cpu and usage.cpu + template.cpu > capacity.max_cpu + 1e-9:
        raise CapacityError(
            f"this agent has not enough CPU: {usage.cpu:g} of {capacity.max_cpu:g} cores are "
            f"in use and the template needs {template.cpu:g} (MAX_CPU)")
    need_gb = template.memory_mb / 1024
    if capacity.max_memory_gb and usage.memory_gb + need_gb > capacity.max_memory_gb + 1e-9:
        raise CapacityError(
            f"this agent has not enough memory: {usage.memory_gb:g} of "
            f"{capacity.max_memory_gb:g} GB are in use and the template needs {need_gb:g} GB "
            "(MAX_MEMORY)")


# (session_id, state, reason): an unsolicited change, e.g. the session's process died.
StatusListener = Callable[[str, str, str], None]
# (session_id, message): progress a user may read while a session starts ("pulling image
# example/app: 40%", "scheduled on node n1"); shown in the session's events.
ProgressListener = Callable[[str, str], None]


class PlatformDriver(ABC):
    """Runs sessions somewhere and answers from what it really sees there.

    The contract every driver keeps (tests/integration/agent/test_driver_contract.py runs
    against each):
    - `start()` discovers what already runs before the agent registers (the agent awaits
      it); it retries by itself until it can answer and only then fires.
    - start/stop/hibernate/wake take the command's `deadline` (agent clock,
      `reactor.seconds()`; None = no deadline) and return a cancellable Deferred: the
      executor cancels one that outlives its deadline, and the driver then cleans up what
      it began (a start cancelled half-way leaves nothing running) and fails it with
      `CancelledError` (not a connect error from whatever it was waiting on).
    - A session is listed `starting` from the moment its start begins (and reserves its
      template's resources), `running` once its VNC server accepts RFB, `hibernated` while
      its state is kept for a wake, also across agent restarts.
    - `vnc_endpoint(session_id)` is the only way to a session's VNC server: the driver
      returns an `IStreamClientEndpoint` (TCP to a process or a container, a Kubernetes
      Service, a Unix socket, the API server's port-forward). Nothing else is dialled.
    - `list_sessions()` and `usage()` answer at once from a cache the driver keeps current.
    - Progress and unsolicited changes go through `report_progress` / `report_status`.
    - The shutdown policy is the driver's: `outlives_agent` False means the sessions are
      the agent's children and `shutdown()` stops them (local); True means they keep
      running and are found again by the next `start()` (containers, pods).
    Commands for one session are serialised by the executor, so a driver never sees a stop
    racing a start of the same session.
    """

    name: str = "abstract"
    outlives_agent: bool = False

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._listener: StatusListener | None = None
        self._progress: ProgressListener | None = None

    def set_status_listener(self, listener: StatusListener | None) -> None:
        self._listener = listener

    def set_progress_listener(self, listener: ProgressListener | None) -> None:
        self._progress = listener

    def report_status(self, session_id: str, state: str, reason: str) -> None:
        if self._listener is not None:
            self._listener(session_id, state, reason)

    def report_progress(self, session_id: str, message: str) -> None:
        if self._progress is not None:
            self._progress(session_id, message)

    def start(self) -> Deferred[None] | None:
        """Discover what already runs (and reap what must not); awaited before `register`."""
        return None

    @abstractmethod
    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str, deadline: float | None = None) -> Deferred[None]:
        """Start a session; fires once its VNC server really accepts RFB."""

    @abstractmethod
    def stop_session(self, session_id: str, deadline: float | None = None,
                     purge: bool = False) -> Deferred[None]:
        """Stop it and free everything but a persistent home (also that with `purge`);
        succeeds when the session is already gone."""

    @abstractmethod
    def hibernate_session(self, session_id: str, deadline: float | None = None
                          ) -> Deferred[None]:
        """Stop its processes but keep what wake needs (the home)."""

    @abstractmethod
    def wake_session(self, session_id: str, template: SessionTemplate, user: UserRef | None,
                     deadline: float | None = None) -> Deferred[None]:
        """Start a hibernated session again on its kept state; fires once it accepts RFB."""

    @abstractmethod
    def vnc_endpoint(self, session_id: str) -> Deferred[IStreamClientEndpoint]:
        """Where the agent connects for a viewer of this running session; fails with a
        DriverError (a sentence) when the session does not run here."""

    @abstractmethod
    def list_sessions(self) -> list[SessionInfo]:
        """Sessions this driver has now: starting, running, or hibernated."""

    @abstractmethod
    def usage(self) -> Usage:
        """What running (and starting) sessions reserve."""

    @abstractmethod
    def shutdown(self) -> Deferred[list[str]]:
        """Agent shutdown, by the driver's policy: stop the sessions it must stop
        (`outlives_agent` False) or just let go of them; fires with the ids it stopped."""

    def running_ids(self) -> set[str]:
        return {s.session_id for s in self.list_sessions() if s.state == RUNNING}
