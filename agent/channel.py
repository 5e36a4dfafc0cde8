"""The agent side of the control protocol, independent of the WebSocket carrying it.

On every new connection: `register` first (with the sessions the driver runs now), then
`heartbeat` every interval once `registered` arrives; `command` frames go to the executor;
the driver's unsolicited changes go out as `session_status`. Outcomes and statuses produced
while disconnected wait in a bounded outbox and are sent after the next `registered`.

Time comes from an injected clock (`IReactorTime`), so every timer is testable with
`task.Clock`; the transport is anything with `send_text` and `close`.
"""

from __future__ import annotations

import platform
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.logger import Logger

from agent.commands import Command
from agent.platforms.base import PlatformDriver
from streamspace_common.wire import (
    CLOSE_PROTOCOL_ERROR,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    parse_iso,
)

log = Logger()

REGISTER_TIMEOUT = 15.0
OUTBOX_LIMIT = 1000

# What an operator should do about a refused upgrade (docs/protocol.md, "Control channel").
_REFUSALS = {
    401: " (the agent id or token is wrong, or the token was rotated: check AGENT_ID and "
         "AGENT_TOKEN/AGENT_TOKEN_FILE)",
    409: " (the control plane has a live connection for agent {agent_id}, which answers its "
         "pings: is another agent running with this AGENT_ID? retrying)",
    503: " (the control plane is starting; retrying)",
}


class Link(Protocol):
    """One open control connection, as the channel needs it."""

    def send_text(self, text: str) -> bool:
        """Send one frame; False (never an exception) once the link is closing."""
        ...

    def close(self, code: int, reason: str) -> None: ...


class AgentChannel:
    def __init__(self, *, agent_id: str, platform_name: str, region: str,
                 driver: PlatformDriver, clock, heartbeat_interval: float,
                 metadata: dict[str, Any] | None = None) -> None:
        self.agent_id = agent_id
        self.platform_name = platform_name
        self.region = region
        self.driver = driver
        self.clock = clock
        self.configured_interval = heartbeat_interval
        self.heartbeat_interval = heartbeat_interval
        self.metadata = metadata if metadata is not None else default_metadata()
        self.command_handler: Callable[[Command], Any] | None = None
        self.link: Link | None = None
        self.registered = False
        self.server_offset = 0.0
        self.failures = 0  # connections in a row that ended without `registered`
        self.outbox: deque[tuple[str, dict[str, Any]]] = deque(maxlen=OUTBOX_LIMIT)
        self.stopping = False
        self._closed_waiters: list[defer.Deferred] = []
        self._heartbeat: task.LoopingCall | None = None
        self._register_timer = None
        driver.set_status_listener(self.session_status)
        driver.set_progress_listener(self.session_progress)

    # -- link events ---------------------------------------------------------------------

    def link_opened(self, link: Link) -> None:
        if self.link is not None and self.link is not link:
            self.link.close(1000, "replaced by a new connection")
        self.link, self.registered = link, False
        sessions = [s.to_json() for s in self.driver.list_sessions()]
        self._send("register", {
            "agent_id": self.agent_id,
            "platform": self.platform_name,
            "region": self.region,
            "protocol_version": PROTOCOL_VERSION,
            "capacity": self.driver.capacity.to_json(),
            "sessions": sessions,
            "metadata": self.metadata,
        })
        self._register_timer = self.clock.callLater(REGISTER_TIMEOUT, self._register_overdue)
        log.info("connected to the control plane; registering with {count} running "
                 "session(s)", count=len(sessions), agent_id=self.agent_id)

    def link_closed(self, link: Link, code: int | None, reason: str) -> None:
        if link is not self.link:
            return
        if not self.registered:
            self.failures += 1
        self.link, self.registered = None, False
        self._stop_timers()
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)
        if self.stopping:
            log.info("control connection closed", agent_id=self.agent_id)
            return
        log.warn("control connection closed ({code}: {reason}); reconnecting",
                 code=code, reason=reason or "no reason", agent_id=self.agent_id)

    def close(self, code: int, reason: str) -> defer.Deferred:
        """Close the current connection; fires once it is closed (at once if none)."""
        if self.link is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._closed_waiters.append(d)
        self.link.close(code, reason)
        return d

    def link_failed(self, reason: str) -> None:
        """A connection attempt that never opened (refused, 401, 409, TLS error...)."""
        self.failures += 1
        level = log.error if self.failures in (1, 10) or self.failures % 100 == 0 else log.debug
        hint = next((text for status, text in _REFUSALS.items() if f"[{status}]" in reason),
                    "")
        level("cannot connect to the control plane (attempt {n}): {reason}{hint}",
              n=self.failures, reason=reason, agent_id=self.agent_id,
              hint=hint.format(agent_id=self.agent_id))

    def link_message(self, link: Link, text: str | bytes) -> None:
        if link is not self.link:
            return
        try:
            frame = decode(text)
            if frame.type == "registered":
                self._on_registered(frame.payload)
            elif frame.type == "command":
                self._on_command(frame.payload)
        except ProtocolError as e:
            log.error("protocol error from the control plane: {reason}", reason=str(e),
                      agent_id=self.agent_id)
            link.close(CLOSE_PROTOCOL_ERROR, str(e)[:120])

    # -- frames in -------------------------------------------------------------------------

    def _on_registered(self, payload: dict[str, Any]) -> None:
        if payload.get("agent_id") != self.agent_id:
            raise ProtocolError(f"registered names agent {payload.get('agent_id')!r}, "
                                f"not {self.agent_id!r}")
        try:
            server_interval = float(payload["heartbeat_interval"])
        except (TypeError, ValueError):
            raise ProtocolError("registered heartbeat_interval must be a number") from None
        self.server_offset = parse_iso(payload["server_time"]) - self.clock.seconds()
        # never slower than the control plane asks, faster if the operator said so
        self.heartbeat_interval = (min(self.configured_interval, server_interval)
                                   if server_interval > 0 else self.configured_interval)
        self.registered, self.failures = True, 0
        self._cancel_register_timer()
        self._start_heartbeat()
        log.info("registered with the control plane; heartbeat every {interval} s",
                 interval=self.heartbeat_interval, agent_id=self.agent_id)
        while self.outbox and self.link is not None:
            frame_type, frame_payload = self.outbox[0]
            if not self._send(frame_type, frame_payload):
                break  # the link is closing: the rest waits for the next one
            self.outbox.popleft()

    def _on_command(self, payload: dict[str, Any]) -> None:
        try:
            command = Command.from_payload(payload)
        except ProtocolError as e:
            command_id = payload.get("command_id")
            if not isinstance(command_id, str) or not command_id:
                raise
            self._send("failed", {"command_id": command_id, "reason": f"invalid command: {e}"})
            return
        log.info("command {command_id}: {command_type}", command_id=command.command_id,
                 command_type=command.command_type, session_id=command.session_id)
        if self.command_handler is None:
            self._send("failed", {"command_id": command.command_id,
                                  "reason": "the agent is not ready for commands"})
            return
        self.command_handler(command)

    # -- frames out ------------------------------------------------------------------------

    def emit(self, frame_type: str, payload: dict[str, Any], buffer: bool = True) -> None:
        """Send now if registered; otherwise (no link, or one that is closing) keep
        outcomes for the next connection."""
        if self.link is not None and self.registered and self._send(frame_type, payload):
            return
        if buffer:
            self.outbox.append((frame_type, payload))

    def session_status(self, session_id: str, state: str, reason: str) -> None:
        self.emit("session_status", {"session_id": session_id, "state": state,
                                     "reason": reason})

    def session_progress(self, session_id: str, message: str) -> None:
        """Progress is worth something only now: never buffered for a later connection."""
        self.emit("session_progress", {"session_id": session_id, "message": message[:500]},
                  False)

    def server_now(self) -> float:
        """The control plane's clock, for command deadlines (corrects clock skew)."""
        return self.clock.seconds() + self.server_offset

    def heartbeat(self) -> None:
        if self.link is None or not self.registered:
            return
        try:
            payload = {
                "usage": self.driver.usage().to_json(),
                "sessions": [s.to_json() for s in self.driver.list_sessions()],
            }
        except Exception:
            # a driver bug must not stop the LoopingCall, or the hub would drop us
            log.failure("the driver could not report usage; sending an empty heartbeat")
            payload = {"usage": {}, "sessions": []}
        self._send("heartbeat", payload)

    def _send(self, frame_type: str, payload: dict[str, Any]) -> bool:
        """True if the frame went out; False if there is no open link to take it. A frame
        that cannot be encoded is dropped with a log line (True: retrying cannot help)."""
        if self.link is None:
            return False
        try:
            data = encode(frame_type, payload, self.clock.seconds())
        except ProtocolError as e:
            log.error("not sending {frame_type}: {reason}", frame_type=frame_type, reason=str(e))
            return True
        return self.link.send_text(data.decode("utf-8"))

    # -- timers ----------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = task.LoopingCall(self.heartbeat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(self.heartbeat_interval, now=False)

    def _register_overdue(self) -> None:
        self._register_timer = None
        if self.link is not None and not self.registered:
            log.error("no 'registered' answer within {timeout} s; reconnecting",
                      timeout=REGISTER_TIMEOUT)
            self.link.close(CLOSE_PROTOCOL_ERROR, "no registered answer to register")

    def _cancel_register_timer(self) -> None:
        if self._register_timer is not None and self._register_timer.active():
            self._register_timer.cancel()
        self._register_timer = None

    def _stop_timers(self) -> None:
        self._cancel_register_timer()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None


def default_metadata() -> dict[str, Any]:
    from agent import __version__

    return {"hostname": socket.gethostname(), "agent_version": __version__,
            "python": platform.python_version(), "os": platform.platform(terse=True)}
