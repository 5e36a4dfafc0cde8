"""The control-channel connection: an autobahn WebSocket client kept up by ClientService.

`GET <control plane>/api/v1/agent/connect?agent_id=<id>` with `Authorization: Bearer
<token>`, text frames of at most 64 KiB, no compression, WebSocket pings (a peer that
stops answering them is dropped, so a dead half-open connection is noticed; the agent
answers the control plane's pings, which is how the hub tells a live connection from a
dead one when a second one arrives for the same agent id). The protocol logic lives in
`AgentChannel`; this module only carries frames and reconnects: after any close or failed
attempt it retries with capped jittered backoff (at most 1.5 s), growing only while
connections keep failing to register (a 401 or 409 loop backs off; a lost connection that
was working is retried at once). Sending on a connection that is closing never raises: it
answers False and the channel keeps what matters for the next connection.
"""

from __future__ import annotations

from typing import Any

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from agent.backoff import capped_backoff
from agent.channel import AgentChannel
from agent.endpoints import ControlPlaneAddress
from streamspace_common.wire import CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, MAX_FRAME_BYTES

log = Logger()

CLOSE_WAIT_SECONDS = 3.0
PING_INTERVAL = 15.0
PING_TIMEOUT = 10.0


class ControlClientProtocol(WebSocketClientProtocol):
    channel: AgentChannel
    opened = False

    def onOpen(self) -> None:
        self.opened = True
        self.channel.link_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            log.error("binary frame on the control channel; closing it")
            self.close(CLOSE_PROTOCOL_ERROR, "binary frames are not allowed on the "
                                             "control channel")
            return
        self.channel.link_message(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.opened:
            self.channel.link_closed(self, code, reason or "")
        else:
            self.channel.link_failed(reason or f"closed with code {code}")

    # Link interface
    def send_text(self, text: str) -> bool:
        """False once the connection is closing or closed (autobahn would raise)."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        try:
            self.sendMessage(text.encode("utf-8"), isBinary=False)
        except Disconnected:
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        self.sendClose(code, reason[:120])


class ControlClientFactory(WebSocketClientFactory):
    protocol = ControlClientProtocol
    noisy = False

    def __init__(self, channel: AgentChannel, url: str, token: str, reactor,
                 ping_interval: float = PING_INTERVAL,
                 ping_timeout: float = PING_TIMEOUT) -> None:
        super().__init__(url, headers={"Authorization": f"Bearer {token}"}, reactor=reactor)
        self.channel = channel
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_FRAME_BYTES, maxMessagePayloadSize=MAX_FRAME_BYTES,
            perMessageCompressionOffers=[], openHandshakeTimeout=10,
            closeHandshakeTimeout=2, autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout)

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.channel = self.channel
        return proto


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """Tells the channel about connect failures (refused, DNS, TLS) so it can log them."""

    def __init__(self, endpoint: IStreamClientEndpoint, channel: AgentChannel) -> None:
        self.endpoint, self.channel = endpoint, channel

    def connect(self, factory):
        d = self.endpoint.connect(factory)

        def failed(f):
            if not f.check(defer.CancelledError):
                self.channel.link_failed(f.getErrorMessage())
            return f

        return d.addErrback(failed)


class _QuietLogger(Logger):
    """ClientService logs every retry at info; with a 1.5 s cap that is noise."""

    def info(self, format: str | None = None, **kwargs: Any) -> None:
        self.debug(format, **kwargs)


class _ClientService(ClientService):
    _log = _QuietLogger(namespace="agent.control.reconnect")


class ControlService(service.Service):
    """Keeps the control channel connected; stopping closes it with 1000."""

    name = "control"

    def __init__(self, reactor, address: ControlPlaneAddress, token: str,
                 channel: AgentChannel, retry_policy=None,
                 endpoint: IStreamClientEndpoint | None = None,
                 ping_interval: float = PING_INTERVAL,
                 ping_timeout: float = PING_TIMEOUT) -> None:
        self.channel = channel
        self.reactor = reactor
        policy = retry_policy or capped_backoff()
        factory = ControlClientFactory(channel, address.connect_url(channel.agent_id), token,
                                       reactor, ping_interval, ping_timeout)
        self.client = _ClientService(
            _ReportingEndpoint(endpoint or address.endpoint(reactor), channel), factory,
            retryPolicy=lambda attempt: policy(max(attempt, channel.failures)), clock=reactor)

    def startService(self) -> None:
        super().startService()
        self.client.startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # A WebSocket close handshake first, so the hub reads 1000 and not a dropped socket.
        self.channel.stopping = True
        closed = self.channel.close(CLOSE_NORMAL, "agent shutting down")
        closed.addTimeout(CLOSE_WAIT_SECONDS, self.reactor)
        try:
            await closed
        except defer.TimeoutError:
            pass
        await self.client.stopService()
