"""The two WebSocket legs of a tunnel. Framing only: pairing, policy and HTTP live elsewhere.

Both legs accept binary frames only, with compression off and message size capped; the
viewer leg accepts noVNC with or without the `binary` subprotocol. A leg tells its `owner`
(the tunnel's pairing) when it opens and when it goes, and hands the bytes of every frame to
its `link` once the pairing has linked it, as they arrive (streamspace_common.wsframes:
nothing is assembled, frames are unmasked natively).
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger

from streamspace import metrics
from streamspace.relay.link import MAX_MESSAGE
from streamspace_common.wsframes import StreamingData, no_delay

log = Logger()

CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
# The agent sends frames of up to 1 MiB (one per read of the VNC socket); they stream
# through without being assembled, so their size costs no memory here.
MAX_TUNNEL_FRAME = 1024 * 1024


class Leg(StreamingData, WebSocketServerProtocol):
    owner = None  # told leg_opened(leg) / leg_gone(leg, reason)
    link = None
    _closing = False

    def onConnect(self, request):
        metrics.websocket_opened(self, request.path)
        # noVNC offers `binary` (older versions) or nothing; answer in kind
        if "binary" in (request.protocols or []):
            return "binary"
        return None

    def onOpen(self) -> None:
        self.transport.pauseProducing()  # not a byte is read until the legs are linked
        no_delay(self.transport)
        self.owner = self.factory.owner
        self.owner.leg_opened(self)

    def text_refused(self) -> None:
        self.close_leg(CLOSE_UNSUPPORTED, "binary frames only")

    RELAYS_FRAMES = True  # what one leg receives leaves by the other as server frames

    def frame_received(self, frame: bytearray, start: int) -> None:
        link = self.link
        if link is not None:
            link.forward(self, frame, start)
        elif not self._closing:  # we do not read before the link: such a peer is broken
            self.close_leg(CLOSE_POLICY, "data before the tunnel was ready")

    def held(self) -> int:
        """Bytes Autobahn holds for this leg: input not parsed yet (frames are not
        assembled, see StreamingData)."""
        return len(getattr(self, "data", b"") or b"")

    def close_leg(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self.sendClose(code, reason[:120])
        except Exception:
            if self.transport is not None:
                self.transport.loseConnection()

    def onClose(self, wasClean: bool, code: int, reason: str | None) -> None:
        metrics.websocket_closed(self)
        self._closing = True
        if self.owner is not None:
            self.owner.leg_gone(self, reason or f"closed ({code})")


class LegFactory(WebSocketServerFactory):
    """One factory per leg: `owner` is who hears about the leg (its pairing, or whoever
    refuses it)."""

    def __init__(self, owner, max_message: int = MAX_MESSAGE) -> None:
        super().__init__()
        self.protocol = Leg
        self.owner = owner
        self.setProtocolOptions(
            maxFramePayloadSize=max_message, maxMessagePayloadSize=max_message,
            autoFragmentSize=0, autoPingInterval=0, openHandshakeTimeout=10,
            closeHandshakeTimeout=3, failByDrop=True, tcpNoDelay=True,
            perMessageCompressionAccept=lambda offers: None,
        )
