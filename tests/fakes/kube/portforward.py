"""Pod port-forward over WebSocket, as the kubelet serves it behind the apiserver.

`GET /api/v1/namespaces/{ns}/pods/{pod}/portforward?ports=P` upgraded with subprotocol
`v4.channel.k8s.io` (or `v4.base64.channel.k8s.io`, text frames of base64). Real
behaviour (kubelet `cri/streaming/portforward/websocket.go`): authorization needs `get`
and `create` on pods/portforward; a pod that is not running is refused before the
upgrade; after the upgrade the server sends the port as uint16 little-endian first on
the data channel (0) then on the error channel (1); bytes on channel 0 go to the port
inside the pod and back; if nothing listens there, an error text arrives on channel 1
and the WebSocket closes. One WebSocket carries one TCP connection. The "port inside
the pod" is the real Xvnc the test registered for the pod's image and port.
"""

from __future__ import annotations

import base64
import socket
import struct
from typing import TYPE_CHECKING

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.fakes.kube.status import ApiStatus

if TYPE_CHECKING:
    from tests.fakes.kube.server import FakeKube

BINARY = "v4.channel.k8s.io"
BASE64 = "v4.base64.channel.k8s.io"


class _Pod(protocol.Protocol):
    def __init__(self, ws: PortForwardProtocol) -> None:
        self.ws = ws

    def connectionMade(self) -> None:
        _small_buffers(self.transport, socket.SO_RCVBUF)
        self.ws.pod_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.ws.to_client(0, data)

    def connectionLost(self, reason) -> None:
        self.ws.pod_closed()


class PortForwardProtocol(WebSocketServerProtocol):
    fake: FakeKube

    def onConnect(self, request):
        chosen = next((p for p in request.protocols if p in (BINARY, BASE64)), None)
        if chosen is None:
            raise ConnectionDeny(400, "port-forward needs subprotocol v4.channel.k8s.io")
        try:
            self.pod_ref, self.port, self.backend = self.fake.portforward_target(request, self.transport)
        except ApiStatus as e:
            raise ConnectionDeny(e.code, e.message) from None
        self.base64 = chosen == BASE64
        self.pod: _Pod | None = None
        self.pending: list[bytes] = []
        self.fake.forwards.append(self)
        return chosen

    def onOpen(self) -> None:
        _small_buffers(self.transport, socket.SO_SNDBUF)
        header = struct.pack("<H", self.port)
        self.to_client(0, header)
        self.to_client(1, header)
        if self.backend is None:
            self.forward_error(f"error forwarding port {self.port} to pod {self.pod_ref}, "
                               f"uid : failed to connect to localhost:{self.port} inside "
                               f"namespace: connection refused")
            return
        d = TCP4ClientEndpoint(self.factory.reactor, *self.backend, timeout=5).connect(
            protocol.Factory.forProtocol(lambda: _Pod(self)))
        d.addErrback(lambda f: self.forward_error(
            f"error forwarding port {self.port} to pod {self.pod_ref}: "
            f"{f.getErrorMessage()}"))

    def forward_error(self, text: str) -> None:
        self.to_client(1, text.encode())
        self.sendClose(1000)

    def pod_connected(self, pod: _Pod) -> None:
        self.pod = pod
        # backpressure: each socket is the other's streaming producer (the hijacked HTTP
        # channel is the WebSocket transport's producer until we take its place)
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(pod.transport, True)
        pod.transport.registerProducer(self.transport, True)
        for data in self.pending:
            pod.transport.write(data)
        self.pending.clear()

    def pod_closed(self) -> None:
        self.pod = None
        self.sendClose(1000)

    def to_client(self, channel: int, data: bytes) -> None:
        if self.base64:
            self.sendMessage(str(channel).encode() + base64.b64encode(data), isBinary=False)
        else:
            self.sendMessage(bytes([channel]) + data, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.base64:
            channel, data = int(payload[:1]), base64.b64decode(payload[1:])
        else:
            channel, data = payload[0], payload[1:]
        if channel != 0 or not data:
            return
        if self.pod is None:
            self.pending.append(data)
        else:
            self.pod.transport.write(data)

    def onClose(self, wasClean, code, reason) -> None:
        if self in self.fake.forwards:
            self.fake.forwards.remove(self)
        if self.pod is not None:
            self.pod.transport.loseConnection()


def _small_buffers(transport, option: int) -> None:
    """Fixed 64 KiB kernel buffers on a leg (below TLS if any): on loopback, autotuning
    lets megabytes pile up in the kernel before backpressure shows."""
    while transport is not None and not hasattr(transport, "socket"):
        transport = getattr(transport, "transport", None)
    if transport is not None:
        transport.socket.setsockopt(socket.SOL_SOCKET, option, 65536)


def factory(fake: FakeKube) -> WebSocketServerFactory:
    f = WebSocketServerFactory(reactor=fake.reactor)
    f.protocol = type("Bound", (PortForwardProtocol,), {"fake": fake})
    f.setProtocolOptions(perMessageCompressionAccept=lambda offers: None,
                         autoFragmentSize=0)
    return f
