"""TCP test peers: a server standing in for a VNC server, plus flood/verify helpers.

The flood sends a deterministic byte pattern (a 251-byte cycle, so it never lines up with
frame or buffer sizes) with a registered producer, so the test peer itself respects
backpressure and a stall measures the relay, not the peer. `PatternChecker` verifies a
received stream against that pattern incrementally (no copy of the whole stream kept).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

_CYCLE = 251
_BASE = bytes(range(_CYCLE)) * 300
CHUNK = 64 * 1024


def pattern(offset: int, n: int) -> bytes:
    assert n <= len(_BASE) - _CYCLE
    start = offset % _CYCLE
    return _BASE[start:start + n]


class PatternChecker:
    """Feeds received bytes; `ok` stays True while they follow the pattern in order."""

    def __init__(self) -> None:
        self.offset = 0
        self.ok = True
        self.first_bad: int | None = None

    def feed(self, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            if self.ok and piece != pattern(self.offset, len(piece)):
                self.ok, self.first_bad = False, self.offset
            self.offset += len(piece)


@implementer(IPushProducer)
class Flooder:
    """Writes `total` pattern bytes through `write`, pausing when the transport says so."""

    def __init__(self, clock, transport, write: Callable[[bytes], None], total: int,
                 chunk: int = CHUNK) -> None:
        self.clock, self.transport, self.write = clock, transport, write
        self.total, self.chunk = total, chunk
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        while not self.paused and not self.stopped and self.sent < self.total:
            n = min(self.chunk, self.total - self.sent)
            data = pattern(self.sent, n)
            self.sent += n
            self.write(data)
        if self.sent >= self.total and not self.stopped:
            self.stopped = True
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.clock.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.stopped = True

    @property
    def done(self) -> bool:
        return self.sent >= self.total


class PeerConnection(protocol.Protocol):
    """One accepted connection: records or checks what it receives."""

    def __init__(self, server: PeerServer) -> None:
        self.server = server
        self.received = bytearray()
        self.checker: PatternChecker | None = None
        self.closed = False
        self.flooder: Flooder | None = None

    def connectionMade(self) -> None:
        self.server.connections.append(self)
        if self.server.greeting:
            self.transport.write(self.server.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self.checker is not None:
            self.checker.feed(data)
        else:
            self.received += data

    def connectionLost(self, reason) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def flood(self, clock, total: int) -> Flooder:
        self.flooder = Flooder(clock, self.transport, self.transport.write, total)
        self.flooder.start()
        return self.flooder


class PeerServer(protocol.Factory):
    """Listens on 127.0.0.1:<free port>; `greeting` is sent to every new connection."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.connections: list[PeerConnection] = []
        self.port = None

    def buildProtocol(self, addr) -> PeerConnection:
        return PeerConnection(self)

    def listen(self, reactor) -> int:
        # a real VNC server's accept queue is deep enough for a burst of viewers; so is this
        self.port = reactor.listenTCP(0, self, backlog=1024, interface="127.0.0.1")
        return self.port.getHost().port

    async def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None and not conn.closed:
                conn.transport.abortConnection()
        if self.port is not None:
            await self.port.stopListening()
