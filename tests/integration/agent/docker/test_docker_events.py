"""The events stream breaks and comes back: what happened meanwhile is still reported.

Between the driver and the real engine sits a Unix-socket relay the test can cut: it
stands for the socket breaking or the engine restarting (the suite's shared engine cannot
restart under other tests). While it is cut, a session's container is killed through the
engine's own socket; once the relay is back, the driver reopens `/events`, looks again at
its running sessions and reports the death."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, threads
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint

from agent.platforms.base import UserRef
from agent.platforms.docker.address import EngineAddress
from agent.platforms.docker.engine import EngineClient
from tests.support.http import poll
from tests.support.polling import until

pytestmark = pytest.mark.slow


class _Leg(protocol.Protocol):
    peer: _Leg | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.relay.legs.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class SocketRelay(protocol.Factory):
    """Relays each connection on `path` to the engine's socket; `cut()` drops them all
    and stops listening, `restore()` listens again."""

    def __init__(self, path: str, target: str) -> None:
        self.path, self.target = path, target
        self.legs: set[_Leg] = set()
        self.port = None

    def buildProtocol(self, addr):  # noqa: N802
        inner = _Leg()
        inner.relay = self
        self.legs.add(inner)

        def linked(outer: _Leg) -> None:
            outer.relay, outer.peer, inner.peer = self, inner, outer
            self.legs.add(outer)
            outer.transport.resumeProducing()

        def failed(_reason) -> None:
            if inner.transport is not None:
                inner.transport.loseConnection()

        outward = protocol.Factory.forProtocol(_Leg)
        UNIXClientEndpoint(reactor, self.target).connect(outward).addCallbacks(linked, failed)
        return inner

    async def restore(self) -> None:
        self.port = await UNIXServerEndpoint(reactor, self.path).listen(self)

    async def cut(self) -> None:
        await self.port.stopListening()
        for leg in list(self.legs):
            leg.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_death_while_the_stream_was_down_is_reported_after_it_reopens(docker,
                                                                             tmp_path):
    relay = SocketRelay(str(tmp_path / "relay.sock"), str(docker.engine.socket))
    await relay.restore()
    client = EngineClient(reactor, EngineAddress.parse(f"unix://{relay.path}"))
    driver = docker.make(client=client)
    await driver.start()
    try:
        await driver.start_session("e1", docker.template(), UserRef("u1", "ann"), "")
        container = driver.container_id("e1")
        await relay.cut()
        await until(lambda: not driver.events.connected, what="the stream to notice the cut")
        await threads.deferToThread(docker.engine.cli, "kill", container)
        assert docker.statuses == []  # nobody could have told the driver yet
        await relay.restore()
        await until(lambda: docker.statuses, timeout=20, what="the death to be reported")
        [(sid, state, reason)] = docker.statuses
        assert (sid, state) == ("e1", "failed") and "exited with code 137" in reason, reason
        await until(lambda: driver.events.connected, what="the stream to be open again")
        assert driver.list_sessions() == []
        await poll(lambda: threads.deferToThread(lambda: not docker.containers()),
                   what="the dead container to be removed")
    finally:
        if relay.port is not None and relay.port.connected:
            await relay.port.stopListening()
