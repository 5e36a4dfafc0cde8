"""Binary WebSocket data frames for the VNC tunnels' hot path (RFC 6455, section 5).

Autobahn opens and closes the tunnels' WebSockets, parses frames and handles control
frames; `StreamingData` takes data frames from its streaming API as they arrive (no
message is assembled) and writes data frames itself, because Autobahn's per-message path
costs more than the bytes do: its masker copies every payload four times (about 110 us per
256 KiB here, against 5 us for the XOR itself). This module calls Autobahn's own native
SSE2 XOR (the NVX extension the start-up check requires) on one buffer, and falls back to
Autobahn's masker objects where NVX is missing.

Client frames (the agent's) are masked with a fresh random key each, as the RFC requires;
server frames (the control plane's) are not masked.
"""

from __future__ import annotations

import os
import struct

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import XorMaskerNull
from twisted.internet.abstract import FileDescriptor

try:  # Autobahn's NVX extension module (built with it, or shipped in its wheel)
    from _nvx_xormasker import ffi as _ffi
    from _nvx_xormasker import lib as _lib
except ImportError:  # pragma: no cover - without NVX: correct, just slower
    _ffi = _lib = None

OP_BINARY = 0x2
FIN = 0x80
MASKED = 0x80
NATIVE = _lib is not None


def header(length: int, mask: bytes = b"") -> bytes:
    """A final binary frame's header for a payload of `length` bytes (`mask`: 4 bytes)."""
    flag = MASKED if mask else 0
    if length <= 125:
        head = struct.pack("!BB", FIN | OP_BINARY, flag | length)
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", FIN | OP_BINARY, flag | 126, length)
    else:
        head = struct.pack("!BBQ", FIN | OP_BINARY, flag | 127, length)
    return head + mask


def server_frame(payload: bytes, unmasker: Unmasker | None = None) -> tuple[bytearray, int]:
    """(frame, start): a whole unmasked binary frame carrying `payload` (unmasked on the way
    when it came masked), whose payload starts at `frame[start]`. One copy of the payload."""
    frame = bytearray(header(len(payload)))
    start = len(frame)
    frame += payload
    if unmasker is not None:
        unmasker.process_into(frame, start)
    return frame, start


def client_frame(payload: bytes) -> bytearray:
    """A whole masked binary frame, masked with a fresh random key."""
    key = os.urandom(4)
    frame = bytearray(header(len(payload), key))
    start = len(frame)
    frame += payload
    Unmasker(key).process_into(frame, start)
    return frame


def no_delay(transport) -> None:
    """TCP_NODELAY on a WebSocket's socket. Autobahn's Twisted adapter tries to set it in
    connectionMade before it has copied the `tcpNoDelay` option from its factory, fails with
    an AttributeError it swallows, and leaves Nagle on: each relayed write would then wait
    for the previous one's ACK (up to a 40 ms delayed ACK on Linux)."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):  # not TCP (a Unix socket)
        pass


def write_now(transport, data: bytes | bytearray) -> None:
    """`transport.write(data)`, sent at once when nothing is queued before it.

    Twisted queues every write until the next reactor round, with two epoll changes around
    it; a relay writing to a socket that can take the bytes now saves both, and its
    producer is never paused for data that is already in the kernel. What the socket does
    not take is queued by `write` as usual. Only a socket's own transport is written to
    directly: a TLS transport (a wrapper that forwards attribute lookups to the socket's
    transport beneath it) must encrypt, so it just writes.
    """
    if (isinstance(transport, FileDescriptor) and transport.connected
            and not transport.disconnecting and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent >= len(data):
                return
            data = memoryview(data)[sent:]
    transport.write(data if type(data) is bytes else bytes(data))


class Unmasker:
    """XORs a frame's payload with its key as the payload streams in, chunk by chunk."""

    __slots__ = ("_native", "_fallback")

    def __init__(self, key: bytes) -> None:
        if _lib is not None:
            self._native = _ffi.gc(_lib.nvx_xormask_new(_ffi.from_buffer(key)),
                                   _lib.nvx_xormask_free)
            self._fallback = None
        else:
            from autobahn.websocket.xormasker import create_xor_masker

            self._native = None
            self._fallback = create_xor_masker(key, 1 << 20)

    def process(self, chunk: bytes) -> bytes:
        """The next `chunk` of the payload, unmasked (a new object)."""
        if self._native is None:
            return self._fallback.process(chunk)
        buf = bytearray(chunk)
        _lib.nvx_xormask_process(self._native, _ffi.from_buffer(buf), len(buf))
        return bytes(buf)

    def process_into(self, buf: bytearray, start: int = 0) -> None:
        """Unmask (or mask) `buf[start:]` in place."""
        n = len(buf) - start
        if n <= 0:
            return
        if self._native is None:
            buf[start:] = self._fallback.process(bytes(buf[start:]))
            return
        _lib.nvx_xormask_process(self._native, _ffi.from_buffer(buf) + start, n)


class StreamingData:
    """Mixin for an Autobahn WebSocket protocol (before it in the bases) that relays bytes.

    The payload of binary frames is handed on as it arrives, unmasked natively: to
    `data_received(chunk)`, or, when `RELAYS_FRAMES` is set (a server relaying to another
    server leg), to `frame_received(frame, start)` already framed as an unmasked binary
    frame for `send_frame`. A text message calls `text_refused()` and its payload is
    dropped; `send_data(payload)` writes one binary frame (masked when this side is the
    client). Control frames, limits (maxFramePayloadSize, maxMessagePayloadSize) and
    closing stay Autobahn's."""

    RELAYS_FRAMES = False
    _unmasker: Unmasker | None = None

    def data_received(self, chunk: bytes) -> None:
        raise NotImplementedError

    def frame_received(self, frame: bytearray, start: int) -> None:
        raise NotImplementedError

    def text_refused(self) -> None:
        raise NotImplementedError

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        if not isBinary:
            self.text_refused()

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        mask = self.current_frame.mask
        if mask and self.message_is_binary:  # unmask here, natively, instead of Autobahn
            self._unmasker = Unmasker(mask)
            self.current_frame_masker = XorMaskerNull()
        else:
            self._unmasker = None

    def onMessageFrameData(self, payload: bytes) -> None:
        if not self.message_is_binary or self.failedByMe:
            return
        if self.RELAYS_FRAMES:
            self.frame_received(*server_frame(payload, self._unmasker))
        elif self._unmasker is not None:
            self.data_received(self._unmasker.process(payload))
        else:
            self.data_received(payload)

    def onMessageFrameEnd(self) -> None:
        self._unmasker = None

    def onMessageEnd(self) -> None:
        pass  # nothing was assembled

    def send_data(self, payload: bytes) -> bool:
        """Write `payload` as one binary frame; False (nothing written) unless open."""
        if self.factory.isServer:
            return self.send_frame(server_frame(payload)[0])
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        write_now(self.transport, client_frame(payload))
        return True

    def send_frame(self, frame: bytes | bytearray) -> bool:
        """Write a whole frame (from `server_frame`); False (nothing written) unless open."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        write_now(self.transport, frame)
        return True
