"""The API server's pod port-forward as an `IStreamClientEndpoint` (agent outside the cluster).

`GET /api/v1/namespaces/{ns}/pods/{pod}/portforward?ports=P` upgraded to WebSocket with
subprotocol `v4.channel.k8s.io`. Each message is one channel byte then payload; for the
one port we forward, data is channel 0 and errors channel 1. Right after the upgrade the
server sends the port (uint16 little-endian) first on each channel; the client sends no
header. A forwarding error is text on channel 1, then close. One WebSocket carries one
TCP connection, so each viewer gets its own.

The transport handed to the tunnel behaves like a TCP transport: `write` sends channel-0
messages, `pauseProducing`/`resumeProducing` stop and restart reading the WebSocket's
socket (so the relay's backpressure reaches the API server), `registerProducer` puts the
other leg under this socket's write buffer, `loseConnection` closes the WebSocket cleanly.
"""

from __future__ import annotations

import struct
from urllib.parse import quote

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from agent.platforms.kubernetes.cluster import ClusterAccess

log = Logger()

SUBPROTOCOL = "v4.channel.k8s.io"
DATA, ERROR = 0, 1
MAX_CHUNK = 32 * 1024
MAX_MESSAGE = 1024 * 1024


class PortForwardError(ConnectionError):
    """The API server or kubelet refused or broke the forward (the message says why)."""


@implementer(ITransport, IPushProducer)
class PortForwardTransport:
    """A TCP-like transport over one port-forward WebSocket (see the module docstring)."""

    def __init__(self, ws: _ForwardProtocol, pod: str, port: int) -> None:
        self.ws, self.pod, self.port = ws, pod, port
        self.protocol = None
        self.disconnecting = False
        self._paused = False
        self._pending: list[bytes] = []

    @property
    def transport(self):
        """The WebSocket's socket (the tunnel sums its write buffer)."""
        return self.ws.transport

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or not data:
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            self.ws.sendMessage(b"\x00" + bytes(view[start:start + MAX_CHUNK]),
                                isBinary=True)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.ws.transport.resumeProducing()  # so the close handshake can be read
            self.ws.sendClose(1000)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.ws.dropConnection(abort=True)

    def getPeer(self):
        return IPv4Address("TCP", f"{self.pod}.portforward", self.port)

    def getHost(self):
        return self.ws.transport.getHost()

    # -- flow control ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self.ws.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while self._pending and not self._paused and self.protocol is not None:
            self.protocol.dataReceived(self._pending.pop(0))
        if not self._paused:
            self.ws.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        self.ws.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.ws.transport.unregisterProducer()

    def setTcpNoDelay(self, enabled: bool) -> None:
        if hasattr(self.ws.transport, "setTcpNoDelay"):
            self.ws.transport.setTcpNoDelay(enabled)

    # -- from the WebSocket ----------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self._paused or self.protocol is None or self._pending:
            self._pending.append(data)  # bounded: reading stops while paused
        else:
            self.protocol.dataReceived(data)


class _ForwardProtocol(WebSocketClientProtocol):
    factory: _ForwardFactory
    transport_wrapper: PortForwardTransport | None = None
    error_text = b""

    def onOpen(self) -> None:
        self.headers = {DATA: b"", ERROR: b""}
        self.error_text = b""
        self.transport_wrapper: PortForwardTransport | None = None
        self.factory.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not payload:
            return
        channel, data = payload[0], payload[1:]
        if channel not in (DATA, ERROR):
            return
        need = 2 - len(self.headers[channel])
        if need > 0:  # the port header the server sends first on each channel
            self.headers[channel] += data[:need]
            data = data[need:]
            if len(self.headers[DATA]) == 2 and len(self.headers[ERROR]) == 2:
                self.factory.headers_read(self)
        if not data:
            return
        if channel == ERROR:
            self.error_text += data[:4096]
            log.warn("port-forward to {pod}: {text}", pod=self.factory.pod,
                     text=self.error_text.decode("utf-8", "replace"))
            self.sendClose(1000)
        elif self.transport_wrapper is not None:
            self.transport_wrapper.deliver(data)

    def onClose(self, wasClean: bool, code, reason) -> None:
        text = self.error_text.decode("utf-8", "replace").strip()
        why = text or reason or (f"WebSocket closed ({code})" if code else "")
        self.factory.closed(self, why, clean=wasClean and not text)


class _ForwardFactory(WebSocketClientFactory):
    protocol = _ForwardProtocol
    noisy = False

    def __init__(self, target, pod: str, port: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target, self.pod, self.port = target, pod, port
        self.ready: defer.Deferred = defer.Deferred()
        self.ws: _ForwardProtocol | None = None

    def opened(self, ws: _ForwardProtocol) -> None:
        self.ws = ws

    def headers_read(self, ws: _ForwardProtocol) -> None:
        port = struct.unpack("<H", ws.headers[DATA])[0]
        if port != self.port:
            ws.sendClose(1000)
            self._fail(PortForwardError(f"the API server forwards port {port}, not "
                                        f"{self.port}"))
            return
        wrapper = PortForwardTransport(ws, self.pod, self.port)
        ws.transport_wrapper = wrapper
        proto = self.target.buildProtocol(wrapper.getPeer())
        wrapper.protocol = proto
        proto.makeConnection(wrapper)  # as TCP endpoints do: connected before firing
        if not self.ready.called:
            self.ready.callback(proto)

    def closed(self, ws: _ForwardProtocol, why: str, clean: bool) -> None:
        wrapper = ws.transport_wrapper
        if wrapper is None or wrapper.protocol is None:
            self._fail(PortForwardError(f"port-forward to pod {self.pod} port {self.port} "
                                        f"failed: {why or 'closed during the handshake'}"))
            return
        reason = (error.ConnectionDone(why) if clean
                  else error.ConnectionLost(why or "port-forward closed"))
        wrapper.protocol.connectionLost(Failure(reason))

    def _fail(self, e: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(e)

    def clientConnectionFailed(self, connector, reason) -> None:
        self._fail(PortForwardError(reason.getErrorMessage()))


@implementer(IStreamClientEndpoint)
class PortForwardEndpoint:
    """Connects a protocol to `port` of `pod` through the API server."""

    def __init__(self, reactor, access: ClusterAccess, namespace: str, pod: str, port: int,
                 timeout: float = 10.0) -> None:
        self.reactor, self.access = reactor, access
        self.namespace, self.pod, self.port, self.timeout = namespace, pod, port, timeout

    def url(self) -> str:
        scheme = "wss" if self.access.tls else "ws"
        path = (f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/"
                f"{quote(self.pod, safe='')}/portforward?ports={self.port}")
        host = f"[{self.access.host}]" if ":" in self.access.host else self.access.host
        return f"{scheme}://{host}:{self.access.port}{self.access.base_path}{path}"

    def connect(self, protocolFactory) -> defer.Deferred:
        headers = {}
        auth = self.access.authorization()
        if auth:
            headers["Authorization"] = auth
        factory = _ForwardFactory(protocolFactory, self.pod, self.port, self.url(),
                                  reactor=self.reactor, protocols=[SUBPROTOCOL],
                                  headers=headers)
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE, maxMessagePayloadSize=MAX_MESSAGE,
            perMessageCompressionOffers=[], autoFragmentSize=0, tcpNoDelay=True,
            openHandshakeTimeout=self.timeout, closeHandshakeTimeout=2,
            autoPingInterval=0)
        tcp = HostnameEndpoint(self.reactor, self.access.host, self.access.port,
                               timeout=self.timeout)
        endpoint = (wrapClientTLS(self.access.tls_creator(), tcp) if self.access.tls
                    else tcp)
        connecting = endpoint.connect(factory)

        def connected(_ws):
            return factory.ready

        def failed(f):
            if factory.ws is not None and factory.ws.transport_wrapper is None:
                factory.ws.dropConnection(abort=True)  # timed out or refused mid-handshake
            if f.check(PortForwardError, defer.CancelledError):
                return f
            raise PortForwardError(f"cannot reach the API server for the port-forward: "
                                   f"{f.getErrorMessage()}")

        d = connecting.addCallback(connected)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(failed)
