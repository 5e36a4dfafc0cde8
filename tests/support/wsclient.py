"""A minimal real WebSocket client (autobahn) for tests: frames land in a DeferredQueue."""

from __future__ import annotations

import json
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint


class _Protocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.messages.put((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))


class TestClient:
    def __init__(self, protocol: _Protocol, factory) -> None:
        self.protocol = protocol
        self.messages: defer.DeferredQueue = factory.messages
        self.closed: defer.Deferred = factory.closed

    def send_json(self, obj) -> None:
        self.protocol.sendMessage(json.dumps(obj).encode(), isBinary=False)

    def send_raw(self, data: bytes, binary: bool = False) -> None:
        self.protocol.sendMessage(data, isBinary=binary)

    def frame(self, frame_type: str, payload: dict, frame_id: str | None = None) -> None:
        import uuid

        self.send_json({"type": frame_type, "id": frame_id or str(uuid.uuid4()),
                        "timestamp": "2026-01-01T00:00:00Z", "payload": payload})

    async def next_json(self, timeout: float = 10.0) -> dict:
        d = self.messages.get()
        d.addTimeout(timeout, reactor)
        payload, _ = await d
        return json.loads(payload)

    async def next_of_type(self, frame_type: str, timeout: float = 10.0) -> dict:
        while True:
            msg = await self.next_json(timeout)
            if msg["type"] == frame_type:
                return msg

    async def wait_closed(self, timeout: float = 10.0):
        d = defer.Deferred()
        self.closed.addBoth(lambda r: (d.called or d.callback(r), r)[1])
        d.addTimeout(timeout, reactor)
        return await d

    def close(self) -> None:
        self.protocol.sendClose(1000)


async def connect(url: str, headers: dict | None = None, protocols=None,
                  open_timeout: float = 5.0) -> TestClient:
    parsed = urlparse(url)
    factory = WebSocketClientFactory(url, headers=headers or {}, protocols=protocols)
    factory.setProtocolOptions(openHandshakeTimeout=open_timeout)
    factory.protocol = _Protocol
    factory.messages = defer.DeferredQueue()
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    endpoint = TCP4ClientEndpoint(reactor, parsed.hostname, parsed.port)
    await endpoint.connect(factory)
    protocol = await factory.opened
    return TestClient(protocol, factory)
