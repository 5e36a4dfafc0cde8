"""Pairing two WebSocket legs into one byte-for-byte relay with backpressure.

Each leg's TCP transport is registered as a streaming producer on the other's: when a
reader stops reading, its transport's write buffer fills past its high-water mark, the
transport pauses the *other* socket's reading, and the sender is held back by TCP itself.
So the bytes buffered per tunnel stay bounded (see BUFFER_BOUND) whatever the peers do.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()

# What one tunnel may hold in the control plane's memory, per direction: a transport's
# write-buffer high-water mark (64 KiB, twisted's FileDescriptor.bufferSize) plus at most
# one read's worth of messages in flight (MAX_MESSAGE) before the pause takes effect.
MAX_MESSAGE = 256 * 1024
BUFFER_BOUND = 2 * (64 * 1024 + 2 * MAX_MESSAGE)


def transport_buffered(transport) -> int:
    if transport is None:
        return 0
    n = len(getattr(transport, "dataBuffer", b"") or b"") - getattr(transport, "offset", 0)
    n += sum(len(x) for x in getattr(transport, "_tempDataBuffer", []) or [])
    return max(n, 0)


def _detach_http_producer(transport) -> None:
    """A hijacked HTTP transport still has twisted.web's HTTPChannel as its producer;
    it must go before the other leg can be registered."""
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()


class Link:
    """A live tunnel: browser leg <-> tunnel leg."""

    def __init__(self, browser, tunnel, clock, on_close, on_client_bytes=None) -> None:
        self.on_client_bytes = on_client_bytes
        self.browser = browser
        self.tunnel = tunnel
        self.clock = clock
        self.on_close = on_close
        self.started_at = clock.seconds()
        self.last_traffic = self.started_at
        self.bytes_to_session = 0  # browser -> VNC server
        self.bytes_to_browser = 0  # VNC server -> browser
        self.max_buffered = 0
        self.closed = False
        self.close_reason = ""

    def start(self) -> None:
        bt, tt = self.browser.transport, self.tunnel.transport
        _detach_http_producer(bt)
        _detach_http_producer(tt)
        bt.registerProducer(tt, True)
        tt.registerProducer(bt, True)
        self.browser.link = self
        self.tunnel.link = self
        bt.resumeProducing()
        tt.resumeProducing()

    def forward(self, source, payload: bytes) -> None:
        if self.closed:
            return
        self.last_traffic = self.clock.seconds()
        if source is self.browser:
            self.bytes_to_session += len(payload)
            self.tunnel.sendMessage(payload, isBinary=True)
            if self.on_client_bytes is not None:
                self.on_client_bytes(self, payload)
            buffered = transport_buffered(self.tunnel.transport)
        else:
            self.bytes_to_browser += len(payload)
            self.browser.sendMessage(payload, isBinary=True)
            buffered = transport_buffered(self.browser.transport)
        if buffered > self.max_buffered:
            self.max_buffered = buffered

    def buffered(self) -> int:
        return transport_buffered(self.browser.transport) + \
            transport_buffered(self.tunnel.transport)

    def leg_closed(self, leg, reason: str) -> None:
        """One side went away: close the other and free everything, once."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        other = self.tunnel if leg is self.browser else self.browser
        for side in (self.browser, self.tunnel):
            t = side.transport
            if t is not None and getattr(t, "producer", None) is not None:
                t.unregisterProducer()
        # a paused reader could never read the close handshake's answer
        if other.transport is not None:
            other.transport.resumeProducing()
        other.close_leg(1000, reason)
        self.on_close(self)

    def close(self, code: int, reason: str) -> None:
        """Close both legs (idle timeout, shutdown)."""
        if self.closed:
            return
        self.browser.close_leg(code, reason)
        self.leg_closed(self.browser, reason)
