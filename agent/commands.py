"""The command executor: runs control-plane commands on the platform driver, at most once.

Every command id goes through the journal first. A finished one is not run again: a stored
`failed` is answered again as is; a stored `complete` of a lifecycle command is answered
again only if the driver still shows what it achieved (a started session still runs, a
hibernated one is still kept, a stopped one is still gone), else it is answered `failed`
with a sentence saying what the driver has now (an agent that restarted and reaped its
sessions must not replay "started" for a session with nothing behind it). One in progress
is only acked again; one the journal saw start but a previous agent run never finished is
answered `failed` (the agent cannot know how far it got; the control plane reconciles from
what it reports). Lifecycle commands for one session run one at a time in arrival order
(agent/serial.py: at any burst size), so a stop never races a start; tunnel commands
(vnc_connect, vnc_disconnect) and list_sessions never wait behind them. A lifecycle command
that outlives its deadline is cancelled: the driver cleans up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agent.journal import COMPLETE, FAILED, CommandJournal, JournalEntry
from agent.platforms.base import (
    HIBERNATED,
    RUNNING,
    STARTING,
    DriverError,
    PlatformDriver,
    SessionTemplate,
    UserRef,
)
from agent.serial import SerialQueues
from agent.tunnel import TunnelError, TunnelManager
from streamspace_common.wire import COMMAND_TYPES, ProtocolError, parse_iso

log = Logger()

# Commands that change a session's lifecycle, serialised per session.
LIFECYCLE = ("start_session", "stop_session", "hibernate_session", "wake_session")

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
                 server_now: Callable[[], float], clock) -> None:
        self.clock = clock
        self.driver = driver
        self.tunnels = tunnels
        self.journal = journal
        self.emit = emit
        self.server_now = server_now
        self.accepting = True
        self._running: dict[str, defer.Deferred] = {}
        self._serial = SerialQueues()

    def handle(self, command: Command) -> defer.Deferred | None:
        """Answer one delivery of a command; returns the execution's Deferred if it runs."""
        entry = self.journal.get(command.command_id)
        if command.command_id in self._running:
            log.info("command {command_id} delivered again while it runs: acked again",
                     command_id=command.command_id)
            self._ack(command)
            return None
        if entry is not None and entry.finished:
            self._answer_again(command, entry)
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
        d = self._execute(command)
        self._running[command.command_id] = d
        d.addBoth(self._done, command)
        return d

    def running(self) -> list[defer.Deferred]:
        return list(self._running.values())

    def _ack(self, command: Command) -> None:
        self.emit("ack", {"command_id": command.command_id}, False)

    def _answer_again(self, command: Command, entry: JournalEntry) -> None:
        """A redelivered command that finished: its stored outcome, if still true."""
        if entry.status == COMPLETE and entry.command_type == "list_sessions":
            # a query: the stored list is stale, the driver's cache answers now
            self._finish(command, COMPLETE, self._list_sessions())
            return
        if entry.status == COMPLETE:
            untrue = self._no_longer_true(entry.command_type, command.target_session)
            if untrue is not None:
                log.warn("command {command_id} delivered again: its stored success no "
                         "longer holds ({reason})", command_id=command.command_id,
                         session_id=command.target_session, reason=untrue)
                self._finish(command, FAILED, untrue)
                return
        log.info("command {command_id} delivered again: answering its stored outcome",
                 command_id=command.command_id)
        self.emit(entry.status, entry.payload or {}, True)

    def _no_longer_true(self, command_type: str, session_id: str | None) -> str | None:
        """Why a stored `complete` would now be a lie (None while it still holds)."""
        if command_type not in LIFECYCLE or not session_id:
            return None
        seen = {s.session_id: s.state for s in self.driver.list_sessions()}
        state = seen.get(session_id)
        now = (f"it is {state} now" if state else
               "the agent restarted or the session ended since: it has no such session now")
        if command_type in ("start_session", "wake_session"):
            if state in (RUNNING, STARTING):
                return None
            return (f"this agent started the session but no longer runs it ({now}), so that "
                    "success is not repeated")
        if command_type == "hibernate_session":
            if state == HIBERNATED:
                return None
            return (f"this agent hibernated the session but no longer keeps it ({now}), so "
                    "that success is not repeated")
        if state is None:
            return None
        return (f"this agent stopped the session but has it again ({now}), so that success "
                "is not repeated")

    def _execute(self, command: Command) -> defer.Deferred:
        if command.command_type not in LIFECYCLE:
            return defer.ensureDeferred(self._run(command, None))
        key = command.target_session or f"command:{command.command_id}"
        return self._serial.run(key, lambda: defer.ensureDeferred(self._run_lifecycle(command)))

    async def _run_lifecycle(self, command: Command) -> dict[str, Any]:
        """Runs with the session's turn in the serial queue (commands.py docstring)."""
        local_deadline = None
        if command.deadline is not None:
            remaining = command.deadline - self.server_now()
            if remaining <= 0:
                raise CommandFailed("the command arrived after its deadline; it was not run")
            local_deadline = self.clock.seconds() + remaining
        return await self._run(command, local_deadline)

    async def _before_deadline(self, d: defer.Deferred, deadline: float | None,
                               what: str) -> Any:
        """Await a driver call; cancel it (the driver cleans up) at the deadline."""
        if deadline is None:
            return await d
        timed_out = []

        def cancel(_d):
            timed_out.append(True)
            _d.cancel()

        timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), cancel, d)
        try:
            return await d
        except defer.CancelledError:
            if timed_out:
                raise CommandFailed(f"the agent could not {what} before the command's "
                                    "deadline; what it began was undone") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

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

    async def _run(self, command: Command, deadline: float | None) -> dict[str, Any]:
        kind, data = command.command_type, command.data
        if kind not in COMMAND_TYPES:
            raise CommandFailed(f"this agent does not know the command {kind!r}")
        if kind == "list_sessions":
            return self._list_sessions()
        if kind == "vnc_connect":
            return await self._vnc_connect(command.target_session, data)
        if kind == "vnc_disconnect":
            await self.tunnels.close(_required_str(data, "tunnel_id"))
            return {}
        session_id = command.target_session
        if not session_id:
            raise ValueError(f"{kind} needs a session_id")
        if kind == "start_session":
            await self._before_deadline(self.driver.start_session(
                session_id, SessionTemplate.from_json(data.get("template")),
                UserRef.from_json(data.get("user")), str(data.get("name") or ""),
                deadline), deadline, "start the session")
            return {}
        if kind == "wake_session":
            user = UserRef.from_json(data["user"]) if data.get("user") else None
            await self._before_deadline(self.driver.wake_session(
                session_id, SessionTemplate.from_json(data.get("template")), user, deadline),
                deadline, "wake the session")
            return {}
        if kind == "stop_session":
            await self._before_deadline(self.driver.stop_session(
                session_id, deadline, purge=bool(data.get("purge"))), deadline,
                "stop the session")
            return {}
        await self._before_deadline(self.driver.hibernate_session(session_id, deadline),
                                    deadline, "hibernate the session")
        return {}

    def _list_sessions(self) -> dict[str, Any]:
        return {"sessions": [s.to_json() for s in self.driver.list_sessions()]}

    async def _vnc_connect(self, session_id: str | None,
                           data: Mapping[str, Any]) -> dict[str, Any]:
        """The command names the session; only the driver knows where its VNC server is."""
        if not session_id:
            raise ValueError("vnc_connect needs a session_id")
        tunnel_id = _required_str(data, "tunnel_id")
        secret = _required_str(data, "secret")
        endpoint = await self.driver.vnc_endpoint(session_id)
        await self.tunnels.open(tunnel_id, secret, endpoint, session_id)
        return {}


def _required_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"data.{key} must be a non-empty string")
    return value
