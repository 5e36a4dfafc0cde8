"""The two WebSocket legs of a tunnel. Framing only: pairing and policy live elsewhere.

Both legs accept binary frames only, with compression off and message size capped; the
browser leg accepts noVNC with or without the `binary` subprotocol.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger

from streamspace import metrics
from streamspace.relay.link import MAX_MESSAGE

log = Logger()

CLOSE_UNSUPPORTED = 1003


class Leg(WebSocketServerProtocol):
    link = None
    _closing = False

    def onConnect(self, request):
        metrics.websocket_opened(self, request.path)
        # noVNC offers `binary` (older versions) or nothing; answer in kind
        if "binary" in (request.protocols or []):
            return "binary"
        return None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.close_leg(CLOSE_UNSUPPORTED, "binary frames only")
            return
        if self.link is not None:
            self.link.forward(self, payload)
        else:
            self.before_pairing(payload)

    def before_pairing(self, payload: bytes) -> None:
        """Bytes before pairing cannot happen (we are not reading); drop the peer if so."""
        self.close_leg(1008, "data before the tunnel was ready")

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
        text = reason or f"closed ({code})"
        if self.link is not None:
            self.link.leg_closed(self, text)
        self.leg_gone(text)

    def leg_gone(self, reason: str) -> None:
        """Hook for the owner (e.g. cancel a pending tunnel)."""


class LegFactory(WebSocketServerFactory):
    def __init__(self, protocol_class, **attrs) -> None:
        super().__init__()
        self.protocol = protocol_class
        for k, v in attrs.items():
            setattr(self, k, v)
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE, maxMessagePayloadSize=MAX_MESSAGE,
            autoFragmentSize=0, autoPingInterval=0, openHandshakeTimeout=10,
            closeHandshakeTimeout=3, failByDrop=True,
            perMessageCompressionAccept=lambda offers: None,
        )
