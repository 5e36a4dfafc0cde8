"""A loopback TCP proxy whose current connections can be made to die silently.

`blackhole()` is a network path that stops carrying packets without a FIN or RST (a NAT
entry that expired, a cable pulled between two switches): bytes in flight vanish, and
neither end is told, so each side keeps a half-open connection until its own liveness
check gives up. Connections opened afterwards are carried again (the new flow gets a new
path), which is how an agent reconnects while the control plane still holds its old,
dead connection.
"""

from __future__ import annotations

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint


class _Upstream(protocol.Protocol):
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    def connectionMade(self) -> None:
        self.pair.upstream_ready(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if not self.pair.dead:
            self.pair.downstream.write(data)

    def connectionLost(self, reason) -> None:
        if not self.pair.dead:
            self.pair.downstream.loseConnection()


class _Pair(protocol.Protocol):
    """One client connection and its connection to the target."""

    def __init__(self, proxy: BlackholeProxy) -> None:
        self.proxy = proxy
        self.dead = False
        self.upstream = None
        self.pending: list[bytes] = []

    @property
    def downstream(self):
        return self.transport

    def connectionMade(self) -> None:
        self.proxy.pairs.append(self)
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target_port)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _Upstream(self)))
        d.addErrback(lambda _f: self.transport.loseConnection())

    def upstream_ready(self, transport) -> None:
        self.upstream = transport
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.dead and self.upstream is not None:
            self.upstream.write(data)

    def connectionLost(self, reason) -> None:
        if not self.dead and self.upstream is not None:
            self.upstream.loseConnection()


class BlackholeProxy(protocol.Factory):
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.pairs: list[_Pair] = []
        self._port = None

    def buildProtocol(self, addr) -> _Pair:
        return _Pair(self)

    def listen(self) -> int:
        self._port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self._port.getHost().port

    def blackhole(self) -> None:
        """Every connection open now stops carrying bytes, and no end hears of it."""
        for pair in self.pairs:
            pair.dead = True

    async def stop(self) -> None:
        """Close everything, the dead connections too (the test is over)."""
        for pair in self.pairs:
            for transport in (pair.transport, pair.upstream):
                if transport is not None:
                    transport.abortConnection()
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
