"""The command executor: runs control-plane commands on the platform driver, at most once.

Every command id goes through the journal first: a finished one is answered again with its
stored `complete`/`failed` (nothing runs twice), one in progress is only acked again, one
the journal saw start but a previous agent run never finished is answered `failed` (the
agent cannot know how far it got; the control plane reconciles from what it reports).
Commands for one session run one at a time in arrival order, so a stop never races a start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agent.journal import COMPLETE, FAILED, CommandJournal
from agent.platforms.base import (
    DriverError,
    PlatformDriver,
    SessionTemplate,
    UserRef,
    VncEndpoint,
)
from agent.tunnel import TunnelError, TunnelManager
from streamspace_common.wire import COMMAND_TYPES, ProtocolError, parse_iso

log = Logger()

# emit(frame_type, payload, buffer): send to the control plane; `buffer` means keep it for
# the next connection if there is none now (acks are worthless later, outcomes are not).
Emit = Callable[[str, dict[str, Any], bool], None]


@dataclass(frozen=True)
class Command:
    command_id: str
    command_type: str
    session_id: str | None
    data: Mapping[str, Any]
    deadline: float | None

    @property
    def target_session(self) -> str | None:
        """The session a command acts on: `session_id`, else `data.session_id` (the hub
        sends stops for sessions it does not know that way)."""
        if self.session_id:
            return self.session_id
        fallback = self.data.get("session_id")
        return fallback if isinstance(fallback, str) and fallback else None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Command:
        command_id = payload.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            raise ProtocolError("command has no command_id")
        command_type = payload.get("command_type")
        if not isinstance(command_type, str):
            raise ProtocolError(f"command {command_id} has no command_type")
        session_id = payload.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise ProtocolError(f"command {command_id}: session_id must be a string or null")
        data = payload.get("data")
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ProtocolError(f"command {command_id}: data must be an object")
        deadline = payload.get("deadline")
        return cls(command_id, command_type, session_id, data,
                   parse_iso(deadline) if deadline else None)


class CommandFailed(Exception):
    """A command-level refusal whose message is the `failed.reason`."""


class CommandExecutor:
    def __init__(self, driver: PlatformDriver, tunnels: TunnelManager,
                 journal: CommandJournal, emit: Emit,
                 server_now: Callable[[], float]) -> None:
        self.driver = driver
        self.tunnels = tunnels
        self.journal = journal
        self.emit = emit
        self.server_now = server_now
        self.accepting = True
        self._running: dict[str, defer.Deferred] = {}
        self._locks: dict[str, defer.DeferredLock] = {}

    def handle(self, command: Command) -> defer.Deferred | None:
        """Answer one delivery of a command; returns the execution's Deferred if it runs."""
        entry = self.journal.get(command.command_id)
        if command.command_id in self._running:
            self._ack(command)
            return None
        if entry is not None and entry.finished:
            log.info("command {command_id} delivered again: answering its stored outcome",
                     command_id=command.command_id)
            self.emit(entry.status, entry.payload or {}, True)
            return None
        if entry is not None:
            self._finish(command, FAILED, "the agent restarted while running this command; "
                         "it was not run again")
            return None
        if not self.accepting:
            self._finish(command, FAILED, "the agent is shutting down")
            return None
        self.journal.started(command.command_id, command.command_type)
        self._ack(command)
        d = defer.ensureDeferred(self._execute(command))
        self._running[command.command_id] = d
        d.addBoth(self._done, command)
        return d

    def running(self) -> list[defer.Deferred]:
        return list(self._running.values())

    def _ack(self, command: Command) -> None:
        self.emit("ack", {"command_id": command.command_id}, False)

    async def _execute(self, command: Command) -> dict[str, Any]:
        key = command.target_session or f"command:{command.command_id}"
        lock = self._locks.setdefault(key, defer.DeferredLock())
        await lock.acquire()
        try:
            if command.deadline is not None and self.server_now() > command.deadline:
                raise CommandFailed("the command arrived after its deadline; it was not run")
            return await self._run(command)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)

    def _done(self, result: Any, command: Command) -> None:
        self._running.pop(command.command_id, None)
        if isinstance(result, dict):
            self._finish(command, COMPLETE, result)
            return
        error = result.value
        if isinstance(error, CommandFailed | DriverError | TunnelError):
            reason = str(error)
        elif isinstance(error, ValueError):
            reason = f"invalid {command.command_type} command: {error}"
        else:
            log.failure("command {command_id} ({command_type}) crashed", result,
                        command_id=command.command_id, command_type=command.command_type)
            reason = f"the agent hit an internal error ({type(error).__name__}); see its log"
        self._finish(command, FAILED, reason)

    def _finish(self, command: Command, status: str, outcome: Any) -> None:
        if status == COMPLETE:
            payload = {"command_id": command.command_id, "result": outcome}
        else:
            payload = {"command_id": command.command_id, "reason": outcome}
            log.warn("command {command_id} ({command_type}) failed: {reason}",
                     command_id=command.command_id, command_type=command.command_type,
                     session_id=command.session_id, reason=outcome)
        self.journal.finished(command.command_id, command.command_type, status, payload)
        self.emit(status, payload, True)

    # -- the commands --------------------------------------------------------------------

    async def _run(self, command: Command) -> dict[str, Any]:
        kind, data = command.command_type, command.data
        if kind not in COMMAND_TYPES:
            raise CommandFailed(f"this agent does not know the command {kind!r}")
        if kind == "list_sessions":
            return {"sessions": [s.to_json() for s in self.driver.list_sessions()]}
        if kind == "vnc_connect":
            return await self._vnc_connect(data)
        if kind == "vnc_disconnect":
            await self.tunnels.close(_required_str(data, "tunnel_id"))
            return {}
        session_id = command.target_session
        if not session_id:
            raise ValueError(f"{kind} needs a session_id")
        if kind == "start_session":
            endpoint = await self.driver.start_session(
                session_id, SessionTemplate.from_json(data.get("template")),
                UserRef.from_json(data.get("user")), str(data.get("name") or ""))
            return {"vnc": endpoint.to_json()}
        if kind == "wake_session":
            user = UserRef.from_json(data["user"]) if data.get("user") else None
            endpoint = await self.driver.wake_session(
                session_id, SessionTemplate.from_json(data.get("template")), user)
            return {"vnc": endpoint.to_json()}
        if kind == "stop_session":
            await self.driver.stop_session(session_id)
            return {}
        await self.driver.hibernate_session(session_id)
        return {}

    async def _vnc_connect(self, data: Mapping[str, Any]) -> dict[str, Any]:
        tunnel_id = _required_str(data, "tunnel_id")
        secret = _required_str(data, "secret")
        endpoint = VncEndpoint.from_json(data.get("vnc"))
        if not self.driver.serves(endpoint):
            raise CommandFailed(f"no session on this agent serves VNC at "
                                f"{endpoint.host}:{endpoint.port}")
        await self.tunnels.open(tunnel_id, secret, endpoint)
        return {}


def _required_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"data.{key} must be a non-empty string")
    return value
