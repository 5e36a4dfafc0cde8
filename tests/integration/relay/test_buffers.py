"""The per-tunnel buffer bound in the viewer -> session direction, activity parser
included, and a huge paste that must neither cost memory nor keep an idle session awake.
Real control plane, PostgreSQL, the agent's code, real sockets and WebSockets."""

from __future__ import annotations

import struct

import pytest
import pytest_twisted
from twisted.internet import reactor

import streamspace.relay.proxy as proxy_module
from streamspace.relay.link import BUFFER_BOUND, MAX_MESSAGE
from tests.support.polling import settle, until
from tests.support.tcp_peers import PatternChecker, pattern
from tests.support.wsclient import connect

pytestmark = pytest.mark.slow

HANDSHAKE = b"RFB 003.008\n" + b"\x01" + b"\x01"  # version, security None, ClientInit
FB_UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 1280, 800)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)


def paste_header(length: int) -> bytes:
    return struct.pack(">BxxxI", 6, length)


def pattern_message(offset: int, n: int) -> bytes:
    return b"".join(pattern(offset + i, min(60_000, n - i)) for i in range(0, n, 60_000))


class PasteSender:
    """Sends `total` pattern bytes of a paste as MAX_MESSAGE-sized WebSocket messages,
    respecting the viewer's own transport backpressure (it stands for noVNC's socket)."""

    def __init__(self, client, total: int) -> None:
        self.client, self.total = client, total
        self.sent = 0
        self.paused = False
        client.protocol.transport.registerProducer(self, True)
        reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        while not self.paused and self.sent < self.total:
            n = min(MAX_MESSAGE, self.total - self.sent)
            self.client.send_raw(pattern_message(self.sent, n), binary=True)
            self.sent += n
        if self.sent >= self.total:
            self.client.protocol.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.sent = self.total


class AfterPrefix:
    """What the VNC server receives: `prefix`, then the pattern, then `suffix`."""

    def __init__(self, prefix: bytes, total: int) -> None:
        self.prefix, self.total = prefix, total
        self.head = b""
        self.checker = PatternChecker()
        self.tail = b""

    def feed(self, data: bytes) -> None:
        if len(self.head) < len(self.prefix):
            take = len(self.prefix) - len(self.head)
            self.head += data[:take]
            data = data[take:]
        room = self.total - self.checker.offset
        self.checker.feed(data[:room])
        self.tail += data[room:]


@pytest_twisted.ensureDeferred
async def test_a_paste_into_a_server_that_does_not_read_stays_within_the_bound(
        stack, fake_agent):
    """A 48 MiB ClientCutText (far more than every kernel buffer on the path) to a VNC
    server that stops reading: the control plane holds at most BUFFER_BOUND for the tunnel
    (transports, WebSocket assembly and the activity parser), the viewer is held back by
    TCP, and once the server reads again every byte arrives in order, the parser still
    follows the stream, and the key press after the paste counts."""
    total = 48 * 1024 * 1024
    sid, server = await fake_agent.session_on(b"RFB 003.008\n")
    client = await connect(await stack.vnc_url(sid))
    await until(lambda: bool(stack.proxy.links) and bool(server.connections), timeout=20,
                what="the tunnel to be linked")
    link = next(iter(stack.proxy.links))
    peer = server.connections[0]
    prefix = HANDSHAKE + FB_UPDATE_REQUEST + paste_header(total)
    peer.checker = AfterPrefix(prefix, total)
    peer.pause_reading()  # the VNC server stops reading
    client.send_raw(prefix, binary=True)
    sender = PasteSender(client, total)
    peak = 0

    def observe():
        nonlocal peak
        peak = max(peak, link.buffered())

    await settle(lambda: sender.sent, quiet=0.7, timeout=60, observe=observe)
    assert sender.sent < total, "the paste was never held back"
    assert peak <= BUFFER_BOUND and link.max_buffered <= BUFFER_BOUND, (
        peak, link.max_buffered, BUFFER_BOUND)
    assert link.inspector.buffered() <= 12

    peer.resume_reading()
    await until(lambda: sender.sent >= total, timeout=120, what="the whole paste to be sent")
    client.send_raw(FB_UPDATE_REQUEST + KEY, binary=True)
    received = peer.checker
    await until(lambda: len(received.tail) == len(FB_UPDATE_REQUEST + KEY), timeout=120,
                what="every byte of the paste and what follows it")
    assert received.head == prefix
    assert received.checker.ok and received.checker.offset == total, received.checker.first_bad
    assert received.tail == FB_UPDATE_REQUEST + KEY
    assert link.max_buffered <= BUFFER_BOUND
    assert not link.inspector.unparseable and link.inspector.inputs == 1
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_huge_paste_does_not_keep_an_idle_session_awake(migrated_dsn, monkeypatch):
    """After a 10 MiB paste the viewer only watches (framebuffer update requests): the
    session is hibernated for idleness, because the parser kept following the stream."""
    from tests.integration.relay.conftest import InProcessAgent
    from tests.support.stack import make_stack

    # every counted input would be written at once: a parser that counted watching as
    # activity would keep the session awake
    monkeypatch.setattr(proxy_module, "ACTIVITY_WRITE_INTERVAL", 0.0)
    stack = make_stack(migrated_dsn, SESSION_IDLE_TIMEOUT="3s")
    await stack.start()
    agent = InProcessAgent(stack, "paste-agent")
    try:
        await agent.start()
        sid, server = await agent.session_on(b"RFB 003.008\n")
        client = await connect(await stack.vnc_url(sid))
        await until(lambda: bool(stack.proxy.links), timeout=20, what="the tunnel")
        size = 10 * 1024 * 1024
        client.send_raw(HANDSHAKE + KEY + paste_header(size), binary=True)
        for offset in range(0, size, MAX_MESSAGE):
            client.send_raw(pattern_message(offset, min(MAX_MESSAGE, size - offset)),
                            binary=True)
        watching = True

        def watch():
            if watching and not client.closed.called:
                client.send_raw(FB_UPDATE_REQUEST, binary=True)
                reactor.callLater(0.2, watch)

        watch()
        try:
            await stack.wait_state(sid, "hibernated", timeout=60)
        finally:
            watching = False
        assert ("hibernate_session", sid) in agent.driver.calls
        assert len(server.connections[0].received) > size
    finally:
        await agent.stop()
        await stack.stop()
