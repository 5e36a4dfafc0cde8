"""The agent control channel over WebSocket: framing only; meaning lives in the hub.

Admission (token, duplicate agent) happens in the HTTP handler before the upgrade, so a
refused agent gets a plain HTTP error with the API's JSON error shape and nothing changes.
Frames are handled strictly one after another per agent, so state changes keep their order.
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.logger import Logger

from streamspace import metrics
from streamspace.agents.hub import CLOSE_PROTOCOL_ERROR, AgentHub, Refused, new_conn_id
from streamspace.web import error_body
from streamspace_common import wire

log = Logger()


class AgentControlProtocol(WebSocketServerProtocol):
    agent: dict
    conn_id: str
    registered = False
    last_seen = 0.0

    def onConnect(self, request):
        metrics.websocket_opened(self, request.path)
        self.agent = self.factory.agent
        self.conn_id = new_conn_id()
        self.last_seen = self.factory.hub.reactor.seconds()
        self._queue: defer.Deferred = defer.succeed(None)
        self._closing = False
        return None

    def onOpen(self) -> None:
        if not self.factory.hub.attach(self):
            self.close_with(CLOSE_PROTOCOL_ERROR, "agent is already connected")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._closing:
            return
        try:
            if isBinary:
                raise wire.ProtocolError("binary frame on the control channel")
            frame = wire.decode(payload, wire.AGENT_TO_SERVER)
        except wire.ProtocolError as e:
            self._protocol_error(str(e))
            return
        self._queue.addCallback(lambda _: defer.Deferred.fromCoroutine(
            self.factory.hub.handle(self, frame)))
        self._queue.addErrback(self._failed)

    def _failed(self, failure) -> None:
        if failure.check(wire.ProtocolError):
            self._protocol_error(failure.getErrorMessage())
        else:
            log.failure("agent {agent_id}: error handling a frame", failure,
                        agent_id=self.agent["agent_id"])
            self.close_with(1011, "internal error")

    def _protocol_error(self, reason: str) -> None:
        log.warn("agent {agent_id} protocol error: {reason}; disconnecting",
                 agent_id=self.agent["agent_id"], reason=reason)
        self.close_with(CLOSE_PROTOCOL_ERROR, reason)

    def send_frame(self, data: bytes) -> None:
        if not self._closing:
            self.sendMessage(data, isBinary=False)

    def close_with(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.sendClose(code, reason[:120])
        # a peer that never answers the close handshake is dropped by autobahn's
        # closeHandshakeTimeout; the hub forgets the agent now
        self.factory.hub.detach_soon(self, reason)

    def onClose(self, wasClean: bool, code: int, reason: str | None) -> None:
        metrics.websocket_closed(self)
        self._closing = True
        if getattr(self, "agent", None) is not None:
            self.factory.hub.detach_soon(self, reason or f"connection closed ({code})")


class AgentControlFactory(WebSocketServerFactory):
    protocol = AgentControlProtocol

    def __init__(self, hub: AgentHub, agent: dict) -> None:
        super().__init__()
        self.hub = hub
        self.agent = agent
        self.setProtocolOptions(
            maxFramePayloadSize=wire.MAX_FRAME_BYTES,
            maxMessagePayloadSize=wire.MAX_FRAME_BYTES,
            autoPingInterval=0, closeHandshakeTimeout=5, openHandshakeTimeout=10,
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
            return error_body(request, e.status, e.code, e.message)
        if request.getHeader(b"upgrade") is None:
            return error_body(request, 426, "upgrade_required",
                              "this endpoint speaks WebSocket only")
        return WebSocketResource(AgentControlFactory(hub, agent))

    return endpoint
