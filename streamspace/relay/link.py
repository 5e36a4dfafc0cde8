"""Linking two relay ends into one byte-for-byte relay with backpressure (the flow).

An end is anything with a `transport` (a Twisted TCP transport), `send_frame(frame)`,
`held()` (bytes it holds in user space) and a `link` attribute: today the viewer's and the
agent's WebSocket legs, later a leg spliced from another replica. What one end receives is
handed over already framed for the other (each chunk as it arrives, as one binary frame),
so the link forwards without copying or assembling.

Each end's transport is registered as a streaming producer on the other's: when a reader
stops reading, its transport's write buffer fills past its high-water mark, the transport
pauses the *other* socket's reading, and the sender is held back by TCP itself. So the bytes
held per tunnel stay bounded (see BUFFER_BOUND) whatever the peers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from streamspace.relay.rfb import MAX_HELD as PARSER_HELD

# The largest message either end may send (WebSocket messages are capped at this).
MAX_MESSAGE = 256 * 1024
# Each linked transport reads at most READ_SIZE bytes at a time and pauses its producer
# (the other end's socket) once its write buffer passes WRITE_HIGH_WATER: Twisted's
# `bufferSize` is both. Larger than Twisted's 64 KiB default, so a MiB costs four reads,
# frames and writes per hop instead of sixteen.
READ_SIZE = WRITE_HIGH_WATER = 256 * 1024
SEND_LIMIT = 512 * 1024  # bytes handed to one send() (Twisted's default is 128 KiB)

# What one tunnel may hold in the control plane's memory, per direction: the receiving
# end's unparsed input (at most one read; frames are relayed as they arrive, never
# assembled), and the sending end's write buffer: its high-water mark plus what the read
# that crossed it still turned into frames before the pause took effect. And the activity
# parser's header.
FRAME_HEADERS = 4 * 14
PER_DIRECTION = READ_SIZE + WRITE_HIGH_WATER + READ_SIZE + FRAME_HEADERS
BUFFER_BOUND = 2 * PER_DIRECTION + PARSER_HELD


class End(Protocol):
    transport: object
    link: Link | None

    def send_frame(self, frame: bytes | bytearray) -> bool: ...

    def held(self) -> int: ...


class Inspector(Protocol):
    """Looks at the bytes going to the session (the RFB activity parser)."""

    def feed(self, data: bytes) -> int: ...

    def buffered(self) -> int: ...


def transport_buffered(transport) -> int:
    """Bytes a Twisted transport holds waiting to be written."""
    if transport is None:
        return 0
    n = len(getattr(transport, "dataBuffer", b"") or b"") - getattr(transport, "offset", 0)
    n += getattr(transport, "_tempDataLen", 0) or 0
    return max(n, 0)


def _detach_http_producer(transport) -> None:
    """A hijacked HTTP transport still has twisted.web's HTTPChannel as its producer;
    it must go before the other end can be registered."""
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()


class Link:
    """A live relay between `viewer` (towards the browser) and `tunnel` (towards the
    session): counts bytes each way and when traffic last passed."""

    def __init__(self, viewer: End, tunnel: End, clock, inspector: Inspector | None = None,
                 on_input: Callable[[int], None] | None = None) -> None:
        self.viewer = viewer
        self.tunnel = tunnel
        self.clock = clock
        self.inspector = inspector
        self.on_input = on_input
        self.started_at = clock.seconds()
        self.last_traffic = self.started_at
        self.bytes_to_session = 0
        self.bytes_to_viewer = 0
        self.max_buffered = 0
        self.running = False

    def start(self) -> None:
        vt, tt = self.viewer.transport, self.tunnel.transport
        _detach_http_producer(vt)
        _detach_http_producer(tt)
        for t in (vt, tt):
            t.bufferSize, t.SEND_LIMIT = READ_SIZE, SEND_LIMIT
        vt.registerProducer(tt, True)
        tt.registerProducer(vt, True)
        self.viewer.link = self
        self.tunnel.link = self
        self.running = True
        vt.resumeProducing()
        tt.resumeProducing()

    def forward(self, source: End, frame: bytearray, start: int) -> None:
        """`source` received the bytes `frame[start:]`, already framed for the other end."""
        if not self.running:
            return
        self.last_traffic = self.clock.seconds()
        if source is self.viewer:
            self.bytes_to_session += len(frame) - start
            self.tunnel.send_frame(frame)
            if self.inspector is not None:
                inputs = self.inspector.feed(memoryview(frame)[start:])
                if inputs and self.on_input is not None:
                    self.on_input(inputs)
        else:
            self.bytes_to_viewer += len(frame) - start
            self.viewer.send_frame(frame)
        buffered = self.buffered()
        if buffered > self.max_buffered:
            self.max_buffered = buffered

    def buffered(self) -> int:
        """Everything this tunnel holds in user space, both directions."""
        total = 0
        for end in (self.viewer, self.tunnel):
            total += transport_buffered(end.transport) + end.held()
        if self.inspector is not None:
            total += self.inspector.buffered()
        return total

    def stop(self) -> None:
        """Unlink: neither end forwards any more; paused readers read again, so each end
        can read its close handshake."""
        if not self.running:
            return
        self.running = False
        for end in (self.viewer, self.tunnel):
            end.link = None
            t = end.transport
            if t is not None and getattr(t, "producer", None) is not None:
                t.unregisterProducer()
        for end in (self.viewer, self.tunnel):
            if end.transport is not None:
                end.transport.resumeProducing()
