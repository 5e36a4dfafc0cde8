"""VNC tunnels: one TCP connection to a session's VNC server relayed over one WebSocket.

For `vnc_connect` the agent connects to the VNC endpoint its driver gives (without reading
from it yet), opens `WS <control plane>/api/v1/agent/tunnel/<tunnel_id>` with
`Authorization: Bearer <secret>`, and once that is open relays bytes both ways: each read
from the VNC server (at most 1 MiB: one frame per MiB costs the control plane fewer copies
at frame boundaries) becomes one binary frame, and the payload of each binary frame is
written to the VNC server as it arrives (streamspace_common.wsframes: frames are masked
natively and never assembled; every leg has TCP_NODELAY).

Backpressure: each leg's transport is registered as a streaming producer on the other, so
when the WebSocket cannot send, the agent stops reading the VNC socket, and when the VNC
server does not read, the agent stops reading the WebSocket. What the agent then holds per
tunnel is bounded whatever the peers do (AGENT_BUFFER_BOUND): towards the control plane, a
write buffer paused past 256 KiB plus the 1 MiB frame that crossed it; towards the VNC
server, a write buffer paused past 1 MiB (Twisted's `bufferSize` is both a transport's read
size and its high-water mark) plus the 256 KiB read that crossed it; and under one read of
unparsed WebSocket input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from agent.endpoints import ControlPlaneAddress
from streamspace_common.memory import tune_malloc_for_relaying
from streamspace_common.wsframes import StreamingData, no_delay, write_now

log = Logger()

MAX_FRAME = 1024 * 1024  # what the agent sends: one frame per read of the VNC socket
MAX_INBOUND = 256 * 1024  # the largest binary message the control plane may send
# Read size and write high-water mark of each transport (Twisted's `bufferSize` is both;
# its default is 64 KiB): the WebSocket's, and the VNC server's socket's.
WS_BUFFER = 256 * 1024
VNC_BUFFER = MAX_FRAME
SEND_LIMIT = 2 * MAX_FRAME  # bytes handed to one send() (Twisted's default is 128 KiB)
AGENT_BUFFER_BOUND = (WS_BUFFER + MAX_FRAME) + (VNC_BUFFER + WS_BUFFER) + WS_BUFFER + 64
CLOSE_GRACE = 5.0
OPEN = WebSocketProtocol.STATE_OPEN


class TunnelError(Exception):
    """A tunnel that could not be opened; the message is the `failed.reason`."""


@implementer(IPushProducer)
class _Throttle:
    """Lets one leg pause/resume reading on the other, but never close it.

    A transport calls `stopProducing` on its producer when it dies; closing the other leg is
    the tunnel's decision (a WebSocket should get a close frame, not a dropped socket).
    """

    def __init__(self, transport) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _VncLeg(protocol.Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def connectionMade(self) -> None:
        # Not a byte is read until the WebSocket leg is open and the legs are paired.
        self.transport.pauseProducing()
        _size_buffers(self.transport, VNC_BUFFER)
        no_delay(self.transport)
        self.tunnel.vnc = self

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.from_vnc(data)

    def connectionLost(self, reason) -> None:
        self.tunnel.vnc_lost(reason.getErrorMessage())


class _WsLeg(StreamingData, WebSocketClientProtocol):
    tunnel: Tunnel

    def onOpen(self) -> None:
        no_delay(self.transport)
        self.tunnel.ws_opened(self)

    def text_refused(self) -> None:
        self.sendClose(1003, "tunnels carry binary frames only")

    def data_received(self, chunk: bytes) -> None:
        self.tunnel.from_ws(chunk)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.tunnel.ws_closed(code, reason or "")


class _WsFactory(WebSocketClientFactory):
    protocol = _WsLeg
    noisy = False

    def __init__(self, tunnel: Tunnel, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tunnel = tunnel

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.tunnel = self.tunnel
        self.tunnel.ws = proto
        return proto


class Outcome:
    """A one-shot result many can wait for; unlike a shared Deferred, waiting never
    steals the result from other waiters and an unobserved failure is not an error."""

    def __init__(self) -> None:
        self.done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiters: list[defer.Deferred] = []

    def succeed(self, value: Any = None) -> None:
        self._settle(value, None)

    def fail(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if self.done:
            return
        self.done, self._value, self._error = True, value, error
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _fire(self, d: defer.Deferred) -> None:
        if self._error is not None:
            d.errback(self._error)
        else:
            d.callback(self._value)

    def wait(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.done:
            self._fire(d)
        else:
            self._waiters.append(d)
        return d


@dataclass(eq=False)
class Tunnel:
    """One relayed VNC connection; `closed` settles with `stats()` once both legs are down."""

    tunnel_id: str
    endpoint: IStreamClientEndpoint
    clock: Any
    session_id: str = ""
    vnc: _VncLeg | None = None
    ws: _WsLeg | None = None
    ws_open: bool = False
    bytes_from_vnc: int = 0
    bytes_to_vnc: int = 0
    close_reason: str = ""
    _vnc_down: bool = False
    _ws_down: bool = False
    _vnc_connecting: defer.Deferred | None = None
    _ws_connecting: defer.Deferred | None = None
    opened: Outcome = field(default_factory=Outcome)
    closed: Outcome = field(default_factory=Outcome)
    _started: float = field(default_factory=time.monotonic)

    # -- relay ---------------------------------------------------------------------------

    def from_vnc(self, data: bytes) -> None:
        if self.ws is None or not self.ws_open or self._ws_down or self.ws.state != OPEN:
            return  # closing: what the VNC server still sends has nowhere to go
        self.bytes_from_vnc += len(data)
        if len(data) <= MAX_FRAME:
            self.ws.send_data(data)
            return
        for start in range(0, len(data), MAX_FRAME):
            self.ws.send_data(data[start:start + MAX_FRAME])

    def from_ws(self, data: bytes) -> None:
        if self.vnc is None or self._vnc_down:
            return
        self.bytes_to_vnc += len(data)
        write_now(self.vnc.transport, data)

    def ws_opened(self, leg: _WsLeg) -> None:
        """Pair the legs (synchronously, before any relayed frame is processed)."""
        self.ws, self.ws_open = leg, True
        if self._vnc_down or self.vnc is None:
            self._close_ws("the VNC server closed the connection")
            return
        vnc_transport, ws_transport = self.vnc.transport, leg.transport
        _size_buffers(ws_transport, WS_BUFFER)
        ws_transport.registerProducer(_Throttle(vnc_transport), True)
        vnc_transport.registerProducer(_Throttle(ws_transport), True)
        vnc_transport.resumeProducing()
        self.opened.succeed(self)

    # -- closing -------------------------------------------------------------------------

    def vnc_lost(self, why: str) -> None:
        self._vnc_down = True
        self.close_reason = self.close_reason or "the VNC server closed the connection"
        self._close_ws(self.close_reason)
        self._maybe_closed()

    def ws_closed(self, code: int | None, reason: str) -> None:
        self._ws_down = True
        self.opened.fail(TunnelError(
            f"the control plane refused or dropped the tunnel ({reason or code})"))
        self.close_reason = self.close_reason or (
            f"the control plane closed the tunnel ({code}{': ' + reason if reason else ''})")
        self._close_vnc()
        self._maybe_closed()

    def close(self, reason: str) -> None:
        """Close both legs (vnc_disconnect, a failed open, agent shutdown)."""
        self.close_reason = self.close_reason or reason
        self.opened.fail(TunnelError(reason))
        self._close_ws(reason)
        self._close_vnc()
        self._maybe_closed()

    def _close_ws(self, reason: str) -> None:
        if self._ws_down:
            return
        if self.ws is None:
            self._ws_down = True
            if self._ws_connecting is not None:
                self._ws_connecting.cancel()
        elif self.ws_open:
            self.ws.transport.resumeProducing()  # so the close handshake can be read
            self.ws.sendClose(1000, reason[:100])
        else:
            self.ws.dropConnection(abort=True)  # still in the opening handshake

    def _close_vnc(self) -> None:
        if self._vnc_down:
            return
        if self.vnc is None:
            self._vnc_down = True
            if self._vnc_connecting is not None:
                self._vnc_connecting.cancel()
            return
        transport = self.vnc.transport
        transport.loseConnection()
        # a VNC server that stops reading must not keep the socket (and its buffer) alive
        self.clock.callLater(CLOSE_GRACE, lambda: None if self._vnc_down
                             else transport.abortConnection())

    def _maybe_closed(self) -> None:
        if self._vnc_down and self._ws_down:
            self.closed.succeed(self.stats())

    # -- observability -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"tunnel_id": self.tunnel_id, "bytes_from_vnc": self.bytes_from_vnc,
                "bytes_to_vnc": self.bytes_to_vnc,
                "duration": round(time.monotonic() - self._started, 3),
                "close_reason": self.close_reason}

    def buffered_bytes(self) -> int:
        """Bytes the agent holds in user space for this tunnel (write buffers, parser)."""
        total = 0
        for leg in (self.vnc, self.ws):
            if leg is not None and leg.transport is not None:
                total += _pending_writes(leg.transport)
        if self.ws is not None:
            total += len(getattr(self.ws, "data", b"") or b"")
        return total


def _size_buffers(transport, size: int) -> None:
    """Read and buffer in `size` steps (a TLS transport sizes the TCP one beneath it)."""
    seen = 0
    while transport is not None and seen < 4:
        if isinstance(transport, FileDescriptor):
            transport.bufferSize, transport.SEND_LIMIT = size, SEND_LIMIT
            return
        transport = getattr(transport, "transport", None)
        seen += 1


def _pending_writes(transport) -> int:
    total = 0
    seen = 0
    while transport is not None and seen < 4:
        buffer = getattr(transport, "dataBuffer", None)
        if isinstance(buffer, bytes | memoryview | bytearray):
            total += len(buffer) - getattr(transport, "offset", 0)
            total += getattr(transport, "_tempDataLen", 0)
        transport = getattr(transport, "transport", None)
        seen += 1
    return total


class TunnelManager:
    """Opens, tracks and closes the agent's tunnels (one per viewer)."""

    def __init__(self, reactor, address: ControlPlaneAddress, open_timeout: float = 10.0,
                 max_tunnels: int = 1000) -> None:
        self.reactor = reactor
        self.address = address
        self.open_timeout = open_timeout
        self.max_tunnels = max_tunnels
        self.tunnels: dict[str, Tunnel] = {}
        tune_malloc_for_relaying()  # large reads and frames reuse heap, not fresh mmaps

    def open(self, tunnel_id: str, secret: str, endpoint: IStreamClientEndpoint,
             session_id: str = "") -> defer.Deferred:
        """Fires with the open Tunnel, or fails with a TunnelError saying why."""
        existing = self.tunnels.get(tunnel_id)
        if existing is not None:
            return existing.opened.wait()
        if len(self.tunnels) >= self.max_tunnels:
            return defer.fail(TunnelError(
                f"this agent already relays {len(self.tunnels)} tunnels"))
        tunnel = Tunnel(tunnel_id, endpoint, self.reactor, session_id)
        self.tunnels[tunnel_id] = tunnel
        tunnel.closed.wait().addCallback(self._forget, tunnel)
        return defer.ensureDeferred(self._open(tunnel, secret))

    async def _open(self, tunnel: Tunnel, secret: str) -> Tunnel:
        try:
            await self._connect_vnc(tunnel)
            await self._connect_ws(tunnel, secret)
            opened = tunnel.opened.wait()
            opened.addTimeout(self.open_timeout, self.reactor)
            try:
                await opened
            except defer.TimeoutError:
                raise TunnelError("the tunnel WebSocket did not open in time") from None
        except BaseException as e:
            reason = str(e) if isinstance(e, TunnelError) else f"the tunnel failed: {e}"
            tunnel.close(reason)
            raise TunnelError(reason) from e
        log.info("tunnel {tunnel_id} open for session {session_id}",
                 tunnel_id=tunnel.tunnel_id, session_id=tunnel.session_id)
        return tunnel

    async def _connect_vnc(self, tunnel: Tunnel) -> None:
        factory = protocol.Factory.forProtocol(lambda: _VncLeg(tunnel))
        factory.noisy = False
        tunnel._vnc_connecting = tunnel.endpoint.connect(factory)
        tunnel._vnc_connecting.addTimeout(self.open_timeout, self.reactor)
        try:
            await tunnel._vnc_connecting
        except Exception as e:
            tunnel._vnc_down = True
            raise TunnelError(f"cannot reach the session's VNC server: "
                              f"{_describe(e)}") from e
        finally:
            tunnel._vnc_connecting = None

    async def _connect_ws(self, tunnel: Tunnel, secret: str) -> None:
        factory = _WsFactory(tunnel, self.address.tunnel_url(tunnel.tunnel_id),
                             reactor=self.reactor,
                             headers={"Authorization": f"Bearer {secret}"})
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_INBOUND, maxMessagePayloadSize=MAX_INBOUND,
            perMessageCompressionOffers=[], autoFragmentSize=0, tcpNoDelay=True,
            openHandshakeTimeout=self.open_timeout, closeHandshakeTimeout=2)
        tunnel._ws_connecting = self.address.endpoint(
            self.reactor, self.open_timeout).connect(factory)
        try:
            await tunnel._ws_connecting
        except Exception as e:
            tunnel._ws_down = True
            raise TunnelError(f"cannot reach the control plane for the tunnel: "
                              f"{_describe(e)}") from e
        finally:
            tunnel._ws_connecting = None

    def close(self, tunnel_id: str, reason: str = "closed by the control plane"
              ) -> defer.Deferred:
        tunnel = self.tunnels.get(tunnel_id)
        if tunnel is None:
            return defer.succeed(None)
        tunnel.close(reason)
        return tunnel.closed.wait()

    def close_all(self, reason: str = "the agent is shutting down") -> defer.Deferred:
        return defer.gatherResults([self.close(t, reason) for t in list(self.tunnels)],
                                   consumeErrors=True)

    def _forget(self, stats: dict[str, Any], tunnel: Tunnel) -> None:
        if self.tunnels.get(tunnel.tunnel_id) is tunnel:
            del self.tunnels[tunnel.tunnel_id]
        log.info("tunnel {tunnel_id} closed: {close_reason}; {bytes_from_vnc} bytes from "
                 "VNC, {bytes_to_vnc} bytes to VNC in {duration} s", **stats)


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__
