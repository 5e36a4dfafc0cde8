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

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DriverError(Exception):
    """A failure whose message is a sentence a user can read (it becomes `failed.reason`)."""


class CapacityError(DriverError):
    """The agent is full (MAX_SESSIONS, MAX_CPU or MAX_MEMORY would be exceeded)."""


@dataclass(frozen=True)
class VncEndpoint:
    """Where the agent reaches a session's VNC server (never exposed beyond the agent)."""

    host: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    @classmethod
    def from_json(cls, data: Any) -> VncEndpoint:
        if not isinstance(data, Mapping):
            raise ValueError("vnc must be an object {host, port}")
        host, port = data.get("host"), data.get("port")
        if not isinstance(host, str) or not host:
            raise ValueError("vnc.host must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("vnc.port must be a port number")
        return cls(host, port)


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
        return cls(name=name, cpu=cpu, memory_mb=memory_mb, env=clean_env,
                   persistent_home=bool(data.get("persistent_home")), platforms=platforms,
                   display_name=str(data.get("display_name") or ""))

    def platform(self, name: str) -> Mapping[str, Any]:
        settings = self.platforms.get(name) or {}
        return settings if isinstance(settings, Mapping) else {}


@dataclass(frozen=True)
class SessionInfo:
    """A session the driver runs now (what `register` and `list_sessions` report)."""

    session_id: str
    state: str
    vnc: VncEndpoint | None

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "state": self.state,
                "vnc": self.vnc.to_json() if self.vnc else None}


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


class PlatformDriver(ABC):
    """Runs sessions somewhere. Every method is non-blocking; long work returns a Deferred.

    Commands for one session are serialised by the executor, so a driver never sees a stop
    racing a start of the same session.
    """

    name: str = "abstract"

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._listener: StatusListener | None = None

    def set_status_listener(self, listener: StatusListener | None) -> None:
        self._listener = listener

    def report_status(self, session_id: str, state: str, reason: str) -> None:
        if self._listener is not None:
            self._listener(session_id, state, reason)

    def start(self) -> Deferred[None] | None:
        """Called once before the first command (e.g. to reap what a crashed run left)."""
        return None

    @abstractmethod
    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str) -> Deferred[VncEndpoint]:
        """Start a session and fire with its VNC endpoint once it really accepts RFB."""

    @abstractmethod
    def stop_session(self, session_id: str) -> Deferred[None]:
        """Stop it and free everything; succeeds when the session is already gone."""

    @abstractmethod
    def hibernate_session(self, session_id: str) -> Deferred[None]:
        """Stop its processes but keep what wake needs (the home)."""

    @abstractmethod
    def wake_session(self, session_id: str, template: SessionTemplate,
                     user: UserRef | None) -> Deferred[VncEndpoint]:
        """Start a hibernated session again on its kept state."""

    @abstractmethod
    def list_sessions(self) -> list[SessionInfo]:
        """Sessions running now (not hibernated ones, which run nothing)."""

    @abstractmethod
    def usage(self) -> Usage:
        """What running (and starting) sessions reserve."""

    @abstractmethod
    def stop_all(self) -> Deferred[list[str]]:
        """Agent shutdown: stop every session, fire with the ids that were stopped."""

    def serves(self, endpoint: VncEndpoint) -> bool:
        """Whether `endpoint` is the VNC endpoint of one of our sessions.

        `vnc_connect` only opens tunnels to these, so the control channel cannot be used
        to make the agent connect anywhere else on its network.
        """
        return any(s.vnc == endpoint for s in self.list_sessions())
