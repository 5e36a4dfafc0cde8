"""Linking two relay ends into one byte-for-byte relay with backpressure (the flow).

An end is anything with a `transport` (a Twisted TCP transport), `send(bytes)`, `held()`
(bytes it holds in user space) and a `link` attribute: today the viewer's and the agent's
WebSocket legs, later a leg spliced from another replica.

Each end's transport is registered as a streaming producer on the other's: when a reader
stops reading, its transport's write buffer fills past its high-water mark, the transport
pauses the *other* socket's reading, and the sender is held back by TCP itself. So the bytes
held per tunnel stay bounded (see BUFFER_BOUND) whatever the peers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from streamspace.relay.rfb import MAX_HELD as PARSER_HELD

# The largest message either end may deliver (WebSocket messages are capped at this).
MAX_MESSAGE = 256 * 1024
# A transport pauses its producer once its write buffer passes this (Twisted's
# FileDescriptor.bufferSize); one socket read is at most this much too.
WRITE_HIGH_WATER = 64 * 1024
READ_SIZE = 64 * 1024

# What one tunnel may hold in the control plane's memory, per direction: the receiving
# end's message being assembled (at most MAX_MESSAGE, plus a frame header), and the
# sending end's write buffer: its high-water mark, plus one whole message completed by the
# read that crossed it, plus what the rest of that read completed before the pause took
# effect. And the activity parser's header.
FRAME_HEADERS = 64
PER_DIRECTION = MAX_MESSAGE + FRAME_HEADERS + WRITE_HIGH_WATER + MAX_MESSAGE + READ_SIZE
BUFFER_BOUND = 2 * PER_DIRECTION + PARSER_HELD


class End(Protocol):
    transport: object
    link: Link | None

    def send(self, payload: bytes) -> None: ...

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
        vt.registerProducer(tt, True)
        tt.registerProducer(vt, True)
        self.viewer.link = self
        self.tunnel.link = self
        self.running = True
        vt.resumeProducing()
        tt.resumeProducing()

    def forward(self, source: End, payload: bytes) -> None:
        if not self.running:
            return
        self.last_traffic = self.clock.seconds()
        if source is self.viewer:
            self.bytes_to_session += len(payload)
            self.tunnel.send(payload)
            if self.inspector is not None:
                inputs = self.inspector.feed(payload)
                if inputs and self.on_input is not None:
                    self.on_input(inputs)
        else:
            self.bytes_to_viewer += len(payload)
            self.viewer.send(payload)
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
