"""The agent control channel over WebSocket: framing only; meaning lives in the hub.

Admission (token, duplicate agent) happens in the HTTP handler before the upgrade, so a
refused agent gets a plain HTTP error with the API's JSON error shape and nothing changes.
Frames are handled strictly one after another per agent, so state changes keep their order.
A frame that breaks the protocol closes the connection with 4000 and the reason; one whose
handling fails for another reason (a bug) closes it with 4011, so the agent reconnects and
its unanswered commands are asked again. Either way the connection is forgotten at once:
nothing can leave it half-closed, frozen and still counted as connected. The server pings
every agent (WebSocket pings), so a half-open socket is found and dropped.
"""

from __future__ import annotations

import os

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.logger import Logger

from streamspace import metrics
from streamspace.agents.hub import CLOSE_PROTOCOL_ERROR, AgentHub, Refused, new_conn_id
from streamspace.web import error_body
from streamspace_common import wire

log = Logger()

# Frames of one agent waiting to be handled (e.g. behind a command outcome waiting for
# the database). Past PAUSE_AT the hub stops reading the agent's socket (TCP holds the
# rest back: a burst of 500 viewers' vnc_connect answers is legitimate) and reads again
# below RESUME_AT. A read already taken in can still add frames while paused, so the hard
# cap is well above: an agent that gets there is not honouring the pause at all.
PAUSE_AT = 256
RESUME_AT = 64
MAX_QUEUED_FRAMES = 4096
REFUSAL_STATUS = {"bad_request": 400, "unauthorized": 401, "agent_already_connected": 409,
                  "starting": 503}


class AgentControlProtocol(WebSocketServerProtocol):
    agent: dict
    conn_id: str
    registered = False
    last_seen = 0.0
    reading_paused = False  # the hub stopped reading: too many frames waiting

    def onConnect(self, request):
        metrics.websocket_opened(self, request.path)
        self.agent = self.factory.agent
        self.hub: AgentHub = self.factory.hub
        self.conn_id = new_conn_id()
        self.last_seen = self.hub.reactor.seconds()
        self._queue: defer.Deferred = defer.succeed(None)
        self._queued = 0
        self._closing = False
        self._probes: dict[bytes, defer.Deferred] = {}
        return None

    def onOpen(self) -> None:
        if not self.hub.attach(self):
            self.close_with(CLOSE_PROTOCOL_ERROR, "agent is already connected")

    @property
    def is_live(self) -> bool:
        return not self._closing

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._closing:
            return
        self.last_seen = self.hub.reactor.seconds()  # alive, whatever storing it takes
        try:
            if isBinary:
                raise wire.ProtocolError("binary frame on the control channel")
            frame = wire.decode(payload, wire.AGENT_TO_SERVER)
        except wire.ProtocolError as e:
            self._protocol_error(str(e))
            return
        if self._queued >= MAX_QUEUED_FRAMES:
            self._protocol_error(f"more than {MAX_QUEUED_FRAMES} frames waiting to be handled")
            return
        self._queued += 1
        if self._queued == PAUSE_AT and self.transport is not None:
            self.reading_paused = True
            self.transport.pauseProducing()
        self._queue.addCallback(self._handle, frame)
        self._queue.addErrback(self._failed, frame)

    def _handle(self, _, frame: wire.Frame) -> defer.Deferred | None:
        self._queued -= 1
        if self._queued == RESUME_AT and self.reading_paused and not self._closing:
            self.reading_paused = False
            self.last_seen = self.hub.reactor.seconds()  # its silence was ours
            self.transport.resumeProducing()
        if self._closing:
            return None
        return self.hub.tracked(defer.Deferred.fromCoroutine(self.hub.handle(self, frame)))

    def _failed(self, failure, frame: wire.Frame) -> None:
        if failure.check(wire.ProtocolError):
            self._protocol_error(failure.getErrorMessage())
            return
        log.failure("agent {agent_id}: error handling a {type} frame; disconnecting it so "
                    "it reconnects and resends", failure, agent_id=self.agent["agent_id"],
                    type=frame.type)
        self.close_with(wire.CLOSE_INTERNAL_ERROR,
                        f"internal error handling a {frame.type} frame")

    def _protocol_error(self, reason: str) -> None:
        log.warn("agent {agent_id} protocol error: {reason}; disconnecting",
                 agent_id=self.agent["agent_id"], reason=reason)
        self.close_with(CLOSE_PROTOCOL_ERROR, reason)

    def send_frame(self, data: bytes) -> None:
        if not self._closing:
            self.sendMessage(data, isBinary=False)

    def close_with(self, code: int, reason: str) -> None:
        """Close (once) and forget the connection now, whatever the socket's state."""
        if self._closing:
            return
        self._closing = True
        try:
            # a close reason is at most 123 bytes of UTF-8
            self.sendClose(code, reason.encode("utf-8")[:120].decode("utf-8", "ignore"))
        except Exception:
            # an invalid code or a socket not fully open: drop it rather than leave it
            log.failure("agent {agent_id}: closing failed; dropping the connection",
                        agent_id=self.agent["agent_id"])
            self.dropConnection(abort=True)
        # a peer that never answers the close handshake is dropped by autobahn's
        # closeHandshakeTimeout; the hub forgets the agent now
        self.hub.detach_soon(self, reason)
        self._end_probes()

    def probe(self, timeout: float) -> defer.Deferred:
        """Fires True if the peer answers a ping within `timeout` seconds, else False."""
        if self._closing:
            return defer.succeed(False)
        payload = os.urandom(8)
        d: defer.Deferred = defer.Deferred()
        self._probes[payload] = d
        self.hub.reactor.callLater(timeout, self._probe_expired, payload)
        self.sendPing(payload)
        return d

    def _probe_expired(self, payload: bytes) -> None:
        d = self._probes.pop(payload, None)
        if d is not None:
            d.callback(False)

    def onPong(self, payload: bytes) -> None:
        d = self._probes.pop(payload, None)
        if d is not None:
            d.callback(True)

    def _end_probes(self) -> None:
        probes, self._probes = self._probes, {}
        for d in probes.values():
            d.callback(False)

    def onClose(self, wasClean: bool, code: int, reason: str | None) -> None:
        metrics.websocket_closed(self)
        self._closing = True
        self._end_probes()
        if getattr(self, "agent", None) is not None:
            self.hub.detach_soon(self, reason or f"connection closed ({code})")


class AgentControlFactory(WebSocketServerFactory):
    protocol = AgentControlProtocol

    def __init__(self, hub: AgentHub, agent: dict) -> None:
        super().__init__()
        self.hub = hub
        self.agent = agent
        self.setProtocolOptions(
            maxFramePayloadSize=wire.MAX_FRAME_BYTES,
            maxMessagePayloadSize=wire.MAX_FRAME_BYTES,
            # pings find half-open sockets (any frame received counts as an answer)
            autoPingInterval=hub.heartbeat_interval, autoPingTimeout=hub.heartbeat_timeout,
            closeHandshakeTimeout=5, openHandshakeTimeout=10,
            # invalid UTF-8 is refused by wire.decode with a 4000 and its reason; other
            # WebSocket violations (oversize) get a close frame with the code, not a drop
            utf8validateIncoming=False, failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
        )


def agent_connect_endpoint(hub: AgentHub):
    """The Klein handler for /api/v1/agent/connect: authenticate, then upgrade."""

    async def endpoint(request):
        agent_id = (request.args.get(b"agent_id") or [b""])[0].decode("utf-8", "replace")
        auth = request.getHeader(b"authorization")
        try:
            agent = await hub.admit(agent_id or None, auth.decode("latin-1") if auth else None)
        except Refused as e:
            return error_body(request, REFUSAL_STATUS.get(e.code, 400), e.code, e.message)
        if request.getHeader(b"upgrade") is None:
            return error_body(request, 426, "upgrade_required",
                              "this endpoint speaks WebSocket only")
        return WebSocketResource(AgentControlFactory(hub, agent))

    return endpoint
