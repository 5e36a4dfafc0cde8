"""The agent hub: which agents are connected, what they say, and sending them commands.

The hub owns live connections only; everything durable (presence, commands, sessions) goes
through the database, so a restarted control plane loses nothing but sockets.

Faults stay with the agent that caused them. A frame with a bad value is a protocol error
(that agent is closed with 4000). Database trouble never disconnects anyone: what an agent
reports about commands is retried until it is stored (frames of one agent stay in order;
the connection stays up, its liveness is judged on what arrives, not on what is stored),
and heartbeats are stored when the database answers. A second connection for a live
agent id is arbitrated as Buildbot does: the old connection is pinged with a short
deadline and replaced if it does not answer, so a half-open socket never locks its agent
out.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer, task
from twisted.internet.task import deferLater
from twisted.logger import Logger

from streamspace import metrics
from streamspace.agents import payloads
from streamspace.auth import agent_tokens
from streamspace.auth.bearer import parse_bearer
from streamspace.db import agents as agent_rows
from streamspace.db import fleet
from streamspace.db.pool import Database, DatabaseUnavailable
from streamspace_common import wire

log = Logger()
T = TypeVar("T")

REGISTER_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0  # how long a live agent id's old connection has to answer a ping
RETRY_MAX_DELAY = 2.0
OFFLINE_RETRY_FOR = 60.0  # keep trying to record a disconnect this long
CLOSE_PROTOCOL_ERROR = wire.CLOSE_PROTOCOL_ERROR
CLOSE_UNAUTHORIZED = wire.CLOSE_UNAUTHORIZED
CLOSE_HEARTBEAT_TIMEOUT = wire.CLOSE_HEARTBEAT_TIMEOUT
CLOSE_REPLACED = wire.CLOSE_REPLACED


class Refused(Exception):
    """An agent connection refused before the WebSocket upgrade; `code` says why (the
    WebSocket layer turns it into an HTTP answer)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class AgentLink(Protocol):
    """What the hub needs from a WebSocket connection (see streamspace.agents.ws)."""

    agent: dict
    conn_id: str
    registered: bool
    last_seen: float

    @property
    def is_live(self) -> bool: ...
    def send_frame(self, data: bytes) -> None: ...
    def close_with(self, code: int, reason: str) -> None: ...
    def probe(self, timeout: float) -> defer.Deferred: ...


class AgentHub:
    def __init__(self, reactor, db: Database, heartbeat_timeout: float,
                 heartbeat_interval: float = 10.0, probe_timeout: float = PROBE_TIMEOUT
                 ) -> None:
        self.reactor = reactor
        self.db = db
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_interval = heartbeat_interval
        self.probe_timeout = probe_timeout
        self.links: dict[str, AgentLink] = {}  # agent uuid -> live connection
        self.lifecycle: Any = None  # set by the wiring (SessionLifecycle)
        self._ephemeral: dict[str, defer.Deferred] = {}
        # database work `stop()` waits for: offline marks, frames still being handled
        self._writes: set[defer.Deferred] = set()
        self._registered_waiters: dict[str, list[defer.Deferred]] = {}
        self.accepting = False  # set once start-up reconciled the agents table
        self.stopping = False
        self._db_trouble = False
        self._sweeper = task.LoopingCall(self.close_silent)
        self._sweeper.clock = reactor

    # -- connection admission -------------------------------------------------------------

    async def admit(self, agent_id: str | None, authorization: str | None) -> dict:
        """Check the agent's token before the upgrade; returns its row or raises Refused."""
        if not agent_id:
            raise Refused("bad_request", "agent_id query parameter is required")
        if not self.accepting:
            raise Refused("starting", "the control plane is starting; retry shortly")
        token = parse_bearer(authorization)
        agent = await agent_rows.get_by_agent_id(self.db, agent_id)
        if agent is not None:
            agent["id"] = str(agent["id"])
        if token is None or agent is None or not agent["token_hash"] or \
                not agent_tokens.verify(token, agent["token_hash"]):
            log.warn("agent connection refused: bad credentials for {agent_id}",
                     agent_id=agent_id[:64])
            raise Refused("unauthorized", "invalid agent id or token")
        old = self.links.get(agent["id"])
        if old is not None:
            if await old.probe(self.probe_timeout):
                raise Refused("agent_already_connected",
                              f"agent {agent_id} is already connected (its connection "
                              "answers)")
            if self.links.get(agent["id"]) is old:
                log.warn("agent {agent_id}: its connection did not answer a ping within "
                         "{t:.0f}s; a new connection replaces it", agent_id=agent_id,
                         t=self.probe_timeout)
                old.close_with(CLOSE_REPLACED, "replaced by a new connection")
        return agent

    def attach(self, link: AgentLink) -> bool:
        if link.agent["id"] in self.links:
            return False
        self.links[link.agent["id"]] = link
        self.reactor.callLater(REGISTER_TIMEOUT, self._require_registration, link)
        return True

    def _require_registration(self, link: AgentLink) -> None:
        if self.links.get(link.agent["id"]) is link and not link.registered:
            link.close_with(CLOSE_PROTOCOL_ERROR,
                            f"registration not completed within {REGISTER_TIMEOUT:.0f} seconds")

    def tracked(self, handling: defer.Deferred) -> defer.Deferred:
        """`handling` (a frame's), which `stop()` waits for before the database closes: a
        report arriving as an agent goes (a session it stopped) must not be cut off in
        its transaction. Its result is passed on untouched."""
        done: defer.Deferred = defer.Deferred()
        self._writes.add(done)

        def finished(result):
            self._writes.discard(done)
            done.callback(None)
            return result

        return handling.addBoth(finished)

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
        if self.lifecycle is not None:
            deadline = self.reactor.seconds() + OFFLINE_RETRY_FOR
            await self._retrying(
                lambda: self.lifecycle.agent_offline(link.agent["id"], link.conn_id, reason),
                lambda: not self.stopping and self.reactor.seconds() < deadline)

    async def agent_revoked(self, agent_id: str) -> None:
        """Its token was rotated or the agent deleted: a live connection must not outlast
        the credential it was admitted with."""
        for link in list(self.links.values()):
            if link.agent["agent_id"] == agent_id:
                log.info("agent {agent_id}: credentials revoked, disconnecting",
                         agent_id=agent_id)
                link.close_with(CLOSE_UNAUTHORIZED, "agent token revoked")

    def when_registered(self, agent_id: str) -> defer.Deferred:
        """Fires the next time agent `agent_id` completes its registration."""
        d: defer.Deferred = defer.Deferred()
        self._registered_waiters.setdefault(agent_id, []).append(d)
        return d

    # -- database trouble -----------------------------------------------------------------

    async def _retrying(self, work: Callable[[], Awaitable[T]],
                        keep_trying: Callable[[], bool]) -> T | None:
        """`work()` until the database takes it (DatabaseUnavailable is retried with
        capped backoff while `keep_trying()`); None if it gave up."""
        delay = 0.1
        while True:
            try:
                result = await work()
            except DatabaseUnavailable as e:
                if not keep_trying():
                    log.warn("database unavailable; gave up: {e}", e=str(e))
                    return None
                self._trouble(e)
                await deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            self._recovered()
            return result

    async def _stored(self, link: AgentLink, work: Callable[[], Awaitable[T]]) -> T | None:
        """What an agent reported about its commands: retried while its connection is
        open (once closed, the agent sends it again: redelivery and its journal)."""
        return await self._retrying(work, lambda: link.is_live and not self.stopping)

    async def _best_effort(self, work: Callable[[], Awaitable[Any]], what: str) -> None:
        """Heartbeat-like reports: the next one says the same, so one that cannot be
        stored (an outage, a bug) is skipped alone; the connection stays up."""
        try:
            await work()
        except DatabaseUnavailable as e:
            self._trouble(e)
            return
        except Exception:
            log.failure("storing {what} failed; skipped", what=what)
            return
        self._recovered()

    def _trouble(self, e: Exception) -> None:
        if not self._db_trouble:
            log.warn("database unavailable; agent reports wait for it (agents stay "
                     "connected): {e}", e=str(e))
        self._db_trouble = True

    def _recovered(self) -> None:
        if self._db_trouble:
            log.info("database available again; agent reports are stored")
        self._db_trouble = False

    # -- frames ---------------------------------------------------------------------------

    async def handle(self, link: AgentLink, frame: wire.Frame) -> None:
        """One frame from `link` (frames of one agent are handled one after another)."""
        if not link.registered:
            if frame.type != "register":
                raise wire.ProtocolError(f"expected register first, got {frame.type}")
            await self._register(link, frame.payload)
            return
        if frame.type == "register":
            raise wire.ProtocolError("register sent twice")
        p = frame.payload
        agent_uuid = link.agent["id"]
        if frame.type == "heartbeat":
            usage = payloads.usage(p.get("usage"))
            metrics.heartbeat_received(frame.timestamp, self.reactor.seconds())
            reported = payloads.sessions_list(p.get("sessions"))
            await self._best_effort(
                lambda: fleet.record_heartbeat(self.db, agent_uuid, link.conn_id, usage),
                "a heartbeat")
            await self._best_effort(lambda: self.lifecycle.agent_reported(
                agent_uuid, reported, registering=False), "a heartbeat's session list")
        elif frame.type == "ack":
            command_id = payloads.uuid_of(p["command_id"], "command_id")
            if command_id not in self._ephemeral:
                await self._stored(link, lambda: self.lifecycle.command_acked(agent_uuid,
                                                                             command_id))
        elif frame.type in ("complete", "failed"):
            command_id = payloads.uuid_of(p["command_id"], "command_id")
            ok = frame.type == "complete"
            metrics.command_answered(command_id, ok, self.reactor.seconds())
            result = p.get("result") if ok and isinstance(p.get("result"), dict) else {}
            reason = None if ok else payloads.reason(p["reason"])
            if not self._answer_ephemeral(command_id, ok, result, reason):
                await self._stored(link, lambda: self.lifecycle.command_finished(
                    agent_uuid, command_id, ok, reason))
        elif frame.type == "session_progress":
            session_id = payloads.uuid_of(p["session_id"], "session_id")
            message = payloads.reason(p["message"])
            await self._best_effort(lambda: self.lifecycle.session_progress(
                agent_uuid, session_id, message), "a progress event")
        elif frame.type == "session_status":
            session_id = payloads.uuid_of(p["session_id"], "session_id")
            state = p["state"]
            if state not in payloads.STATUS_STATES:
                raise wire.ProtocolError(f"session_status state must be one of "
                                         f"{', '.join(payloads.STATUS_STATES)}")
            reason = payloads.reason(p.get("reason"))
            await self._stored(link, lambda: self.lifecycle.session_status(
                agent_uuid, session_id, state, reason))

    async def _register(self, link: AgentLink, payload: dict) -> None:
        reg = payloads.registration(payload, link.agent["agent_id"])
        agent_uuid = link.agent["id"]
        await self._stored(link, lambda: fleet.mark_online(
            self.db, agent_uuid, link.conn_id, platform=reg.platform, region=reg.region,
            capacity=reg.capacity, metadata=reg.metadata,
            protocol_version=reg.protocol_version))
        if not link.is_live:
            return
        link.registered = True
        now = self.reactor.seconds()
        link.send_frame(wire.encode("registered", {
            "agent_id": link.agent["agent_id"], "heartbeat_interval": self.heartbeat_interval,
            "server_time": wire.iso_utc(now)}, now))
        log.info("agent {agent_id} registered ({platform}, {n} sessions)",
                 agent_id=link.agent["agent_id"], platform=reg.platform,
                 n=len(reg.sessions))
        if self.lifecycle is not None:
            await self._stored(link, lambda: self.lifecycle.agent_reported(
                agent_uuid, reg.sessions, registering=True))
        await self._stored(link, lambda: self.deliver_all(agent_uuid))
        for d in self._registered_waiters.pop(link.agent["agent_id"], []):
            d.callback(link.agent["agent_id"])

    # -- commands -------------------------------------------------------------------------

    def connected(self, agent_uuid: str) -> bool:
        link = self.links.get(agent_uuid)
        return link is not None and link.registered

    async def deliver(self, agent_uuid: str, command: dict, *, claim: bool = True) -> bool:
        """Send one queued command if the agent is connected; it stays queued otherwise.

        A `pending` command is claimed first (`pending -> sent` in the database), so of
        several senders (the request that queued it, the sweep, another replica) exactly
        one sends it. `claim=False` resends an in-flight command as is (a registration:
        the agent dedupes by command id)."""
        link = self.links.get(agent_uuid)
        if link is None or not link.registered:
            return False
        try:
            if claim and not await fleet.claim(self.db, command["id"]):
                return False
            if not claim:
                await fleet.mark_sent(self.db, command["id"])
        except DatabaseUnavailable as e:
            self._trouble(e)
            if claim:
                return False  # still pending: the sweep sends it once the database is back
        link.send_frame(wire.encode("command", {
            "command_id": command["id"], "command_type": command["command_type"],
            "session_id": command["session_id"], "data": command["data"],
            "deadline": command["deadline"]}, self.reactor.seconds()))
        metrics.command_sent(command["id"], command["command_type"], link.agent.get("platform"),
                             self.reactor.seconds())
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
            await self.deliver(agent_uuid, command, claim=False)

    # -- liveness -------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        self.stopping = False
        self._sweeper.start(interval, now=False)

    def stop(self) -> defer.Deferred:
        """Close every agent connection; fires once their offline marks are written."""
        if self._sweeper.running:
            self._sweeper.stop()
        self.stopping = True  # one try each to record the disconnects, no retrying
        for link in list(self.links.values()):
            self.detach_soon(link, "control plane shutting down")
            link.close_with(1000, "control plane shutting down")
        return defer.DeferredList(list(self._writes))

    def close_silent(self) -> None:
        now = self.reactor.seconds()
        for link in list(self.links.values()):
            if getattr(link, "reading_paused", False):
                continue  # we stopped reading it (a backlog to handle): not its silence
            if link.registered and now - link.last_seen > self.heartbeat_timeout:
                log.warn("agent {agent_id} silent for {s:.0f}s: disconnecting",
                         agent_id=link.agent["agent_id"], s=now - link.last_seen)
                link.close_with(CLOSE_HEARTBEAT_TIMEOUT,
                                f"no heartbeat for {self.heartbeat_timeout:.0f}s")


def new_conn_id() -> str:
    return str(uuid.uuid4())
