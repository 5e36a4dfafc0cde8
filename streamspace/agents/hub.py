"""The agent hub: which agents are connected, what they say, and sending them commands.

The hub owns live connections only; everything durable (presence, commands, sessions) goes
through the database, so a restarted control plane loses nothing but sockets.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.logger import Logger

from streamspace import metrics
from streamspace.auth import agent_tokens
from streamspace.auth.bearer import parse_bearer
from streamspace.db import agents as agent_rows
from streamspace.db import fleet
from streamspace.db.pool import Database
from streamspace_common import wire

log = Logger()

REGISTER_TIMEOUT = 10.0
CLOSE_PROTOCOL_ERROR = wire.CLOSE_PROTOCOL_ERROR
CLOSE_UNAUTHORIZED = wire.CLOSE_UNAUTHORIZED
CLOSE_HEARTBEAT_TIMEOUT = wire.CLOSE_HEARTBEAT_TIMEOUT


class Refused(Exception):
    """An agent connection refused before the WebSocket upgrade (HTTP status + code)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AgentLink(Protocol):
    """What the hub needs from a WebSocket connection (see streamspace.agents.ws)."""

    agent: dict
    conn_id: str
    registered: bool
    last_seen: float

    def send_frame(self, data: bytes) -> None: ...
    def close_with(self, code: int, reason: str) -> None: ...


class AgentHub:
    def __init__(self, reactor, db: Database, heartbeat_timeout: float,
                 heartbeat_interval: float = 10.0) -> None:
        self.reactor = reactor
        self.db = db
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_interval = heartbeat_interval
        self.links: dict[str, AgentLink] = {}  # agent uuid -> live connection
        self.lifecycle: Any = None  # set by the wiring (SessionLifecycle)
        self._ephemeral: dict[str, defer.Deferred] = {}
        self._writes: set[defer.Deferred] = set()  # offline marks still being written
        self.accepting = False  # set once start-up reconciled the agents table
        self._sweeper = task.LoopingCall(self.close_silent)
        self._sweeper.clock = reactor

    # -- connection admission -------------------------------------------------------------

    async def admit(self, agent_id: str | None, authorization: str | None) -> dict:
        """Check the agent's token before the upgrade; returns its row or raises Refused."""
        if not agent_id:
            raise Refused(400, "bad_request", "agent_id query parameter is required")
        if not self.accepting:
            raise Refused(503, "starting", "the control plane is starting; retry shortly")
        token = parse_bearer(authorization)
        agent = await agent_rows.get_by_agent_id(self.db, agent_id)
        if agent is not None:
            agent["id"] = str(agent["id"])
        if token is None or agent is None or not agent["token_hash"] or \
                not agent_tokens.verify(token, agent["token_hash"]):
            log.warn("agent connection refused: bad credentials for {agent_id}",
                     agent_id=agent_id[:64])
            raise Refused(401, "unauthorized", "invalid agent id or token")
        if agent["id"] in self.links:
            raise Refused(409, "agent_already_connected",
                          f"agent {agent_id} is already connected")
        return agent

    def attach(self, link: AgentLink) -> bool:
        if link.agent["id"] in self.links:
            return False
        self.links[link.agent["id"]] = link
        self.reactor.callLater(REGISTER_TIMEOUT, self._require_registration, link)
        return True

    def _require_registration(self, link: AgentLink) -> None:
        if self.links.get(link.agent["id"]) is link and not link.registered:
            link.close_with(CLOSE_PROTOCOL_ERROR, "no register frame within 10 seconds")

    def detach_soon(self, link: AgentLink, reason: str) -> defer.Deferred:
        """Forget a closed connection; `stop()` waits for the database write it starts."""
        d = defer.Deferred.fromCoroutine(self.detach(link, reason))
        self._writes.add(d)

        def done(result):
            self._writes.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.warn("marking agent offline failed: {e}",
                                        e=f.getErrorMessage()))
        return d

    async def detach(self, link: AgentLink, reason: str) -> None:
        if self.links.get(link.agent["id"]) is not link:
            return
        del self.links[link.agent["id"]]
        if not link.registered:
            return
        log.info("agent {agent_id} disconnected: {reason}", agent_id=link.agent["agent_id"],
                 reason=reason)
        affected = await fleet.mark_offline(self.db, link.agent["id"], link.conn_id, reason)
        if affected and self.lifecycle is not None:
            self.lifecycle.publish_many(affected)

    async def agent_revoked(self, agent_id: str) -> None:
        """Its token was rotated or the agent deleted: a live connection must not outlast
        the credential it was admitted with."""
        for link in list(self.links.values()):
            if link.agent["agent_id"] == agent_id:
                log.info("agent {agent_id}: credentials revoked, disconnecting",
                         agent_id=agent_id)
                link.close_with(CLOSE_UNAUTHORIZED, "agent token revoked")

    # -- frames ---------------------------------------------------------------------------

    async def handle(self, link: AgentLink, frame: wire.Frame) -> None:
        link.last_seen = self.reactor.seconds()
        if not link.registered:
            if frame.type != "register":
                raise wire.ProtocolError(f"expected register first, got {frame.type}")
            await self._register(link, frame.payload)
            return
        if frame.type == "register":
            raise wire.ProtocolError("register sent twice")
        p = frame.payload
        if frame.type == "heartbeat":
            usage = p.get("usage") if isinstance(p.get("usage"), dict) else {}
            metrics.heartbeat_received(frame.timestamp, self.reactor.seconds())
            await fleet.record_heartbeat(self.db, link.agent["id"], link.conn_id, usage)
        elif frame.type == "ack":
            command_id = _uuid(p["command_id"])
            if command_id not in self._ephemeral:
                await self.lifecycle.command_acked(link.agent["id"], command_id)
        elif frame.type == "complete":
            command_id = _uuid(p["command_id"])
            metrics.command_answered(command_id, True, self.reactor.seconds())
            result = p.get("result") if isinstance(p.get("result"), dict) else {}
            if not self._answer_ephemeral(command_id, True, result, None):
                await self.lifecycle.command_finished(
                    link.agent["id"], command_id, True, result, None)
        elif frame.type == "failed":
            command_id = _uuid(p["command_id"])
            metrics.command_answered(command_id, False, self.reactor.seconds())
            reason = str(p["reason"])[:500]
            if not self._answer_ephemeral(command_id, False, None, reason):
                await self.lifecycle.command_finished(
                    link.agent["id"], command_id, False, None, reason)
        elif frame.type == "session_progress":
            await self.lifecycle.session_progress(
                link.agent["id"], _uuid(p["session_id"]), str(p["message"])[:500])
        elif frame.type == "session_status":
            await self.lifecycle.session_status(
                link.agent["id"], _uuid(p["session_id"]), str(p["state"]),
                str(p.get("reason") or "")[:500])

    async def _register(self, link: AgentLink, payload: dict) -> None:
        if payload.get("agent_id") != link.agent["agent_id"]:
            raise wire.ProtocolError("register agent_id does not match the authenticated agent")
        if payload.get("protocol_version") != wire.PROTOCOL_VERSION:
            raise wire.ProtocolError(
                f"unsupported protocol_version {payload.get('protocol_version')!r} "
                f"(this control plane speaks {wire.PROTOCOL_VERSION})")
        sessions = payload.get("sessions") or []
        if not isinstance(sessions, list):
            raise wire.ProtocolError("register sessions must be a list")
        await fleet.mark_online(self.db, link.agent["id"], link.conn_id, payload)
        link.registered = True
        now = self.reactor.seconds()
        link.send_frame(wire.encode("registered", {
            "agent_id": link.agent["agent_id"], "heartbeat_interval": self.heartbeat_interval,
            "server_time": wire.iso_utc(now)}, now))
        log.info("agent {agent_id} registered ({platform}, {n} sessions)",
                 agent_id=link.agent["agent_id"], platform=payload.get("platform"),
                 n=len(sessions))
        if self.lifecycle is not None:
            await self.lifecycle.agent_registered(link.agent["id"], sessions)
        await self.deliver_all(link.agent["id"])

    # -- commands -------------------------------------------------------------------------

    def connected(self, agent_uuid: str) -> bool:
        link = self.links.get(agent_uuid)
        return link is not None and link.registered

    async def deliver(self, agent_uuid: str, command: dict) -> bool:
        """Send one queued command if the agent is connected; it stays queued otherwise."""
        link = self.links.get(agent_uuid)
        if link is None or not link.registered:
            return False
        link.send_frame(wire.encode("command", {
            "command_id": command["id"], "command_type": command["command_type"],
            "session_id": command["session_id"], "data": command["data"],
            "deadline": command["deadline"]}, self.reactor.seconds()))
        metrics.command_sent(command["id"], command["command_type"], link.agent.get("platform"),
                             self.reactor.seconds())
        await fleet.mark_sent(self.db, command["id"])
        return True

    def send_ephemeral(self, agent_uuid: str, command_type: str, session_id: str | None,
                       data: dict, timeout: float = 30.0) -> defer.Deferred:
        """Send a command that only makes sense now (vnc_connect, vnc_disconnect): not
        queued, not redelivered. Fires with (ok, result, reason) from the agent's answer;
        fails if the agent is not connected or does not answer in `timeout` seconds."""
        link = self.links.get(agent_uuid)
        if link is None or not link.registered:
            return defer.fail(ConnectionError("agent not connected"))
        command_id = str(uuid.uuid4())
        d = defer.Deferred(lambda _: self._ephemeral.pop(command_id, None))
        self._ephemeral[command_id] = d
        d.addTimeout(timeout, self.reactor)
        now = self.reactor.seconds()
        link.send_frame(wire.encode("command", {
            "command_id": command_id, "command_type": command_type, "session_id": session_id,
            "data": data, "deadline": wire.iso_utc(now + timeout)}, now))
        return d

    def _answer_ephemeral(self, command_id: str, ok: bool, result, reason) -> bool:
        d = self._ephemeral.pop(command_id, None)
        if d is None:
            return False
        if not d.called:
            d.callback((ok, result, reason))
        return True

    async def deliver_all(self, agent_uuid: str) -> None:
        """(Re)send every in-flight command: the agent dedupes by command id."""
        for command in await fleet.in_flight_for_agent(self.db, agent_uuid):
            await self.deliver(agent_uuid, command)

    # -- liveness -------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        self._sweeper.start(interval, now=False)

    def stop(self) -> defer.Deferred:
        """Close every agent connection; fires once their offline marks are written."""
        if self._sweeper.running:
            self._sweeper.stop()
        for link in list(self.links.values()):
            self.detach_soon(link, "control plane shutting down")
            link.close_with(1000, "control plane shutting down")
        return defer.DeferredList(list(self._writes))

    def close_silent(self) -> None:
        now = self.reactor.seconds()
        for link in list(self.links.values()):
            if link.registered and now - link.last_seen > self.heartbeat_timeout:
                log.warn("agent {agent_id} silent for {s:.0f}s: disconnecting",
                         agent_id=link.agent["agent_id"], s=now - link.last_seen)
                link.close_with(CLOSE_HEARTBEAT_TIMEOUT,
                                f"no heartbeat for {self.heartbeat_timeout:.0f}s")


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise wire.ProtocolError(f"not a valid id: {str(value)[:40]!r}") from None


def new_conn_id() -> str:
    return str(uuid.uuid4())
