"""Request bodies are bounded while they arrive, before any handler runs.

twisted.web buffers a whole body (to a temporary file past 100 kB, and always for chunked
bodies) before it calls a resource, so a size check in a handler comes after the disk has
filled. `BoundedRequest` keeps the body in memory and stops at the limit: an announced
Content-Length over it is refused as soon as the headers end, and a chunked body is cut
the moment it crosses it. The refusal is a 413 in the one JSON error shape; then the
connection lingers a moment, discarding what the client still sends (so it can read the
answer instead of a reset), and is closed.

Writing the 413 straight to the transport cannot overtake an earlier response on the same
connection: twisted.web's HTTP/1.1 channel does not parse a pipelined request (so never
calls `gotLength` for it) until the response before it has finished; the bytes after a
body wait in the channel's buffer meanwhile. A test pipelines a slow login and an
oversized request to hold it to that.
"""

from __future__ import annotations

import io

from twisted.logger import Logger
from twisted.web import server

from streamspace import metrics
from streamspace.api.body import MAX_BODY_BYTES
from streamspace.api.errors import error_payload

log = Logger()

# After a refusal: how long, and how many more bytes, we read and discard before closing.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


class BoundedRequest(server.Request):
    """A Request whose body never exceeds `max_body` bytes, in memory only."""

    max_body = MAX_BODY_BYTES

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self._body_bytes = 0
        self._refused = False
        if length is not None and length > self.max_body:
            # No "100 Continue" for a body we will not take (the channel checks the
            # header right after this call).
            self.requestHeaders.removeHeader(b"expect")
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        channel = self.channel
        body = error_payload("payload_too_large",
                             f"the request body is larger than {self.max_body // 1024} KiB")
        channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        method = getattr(channel, "_command", b"") or b""
        path = (getattr(channel, "_path", b"") or b"").split(b"?", 1)[0]
        metrics.http_request_refused(path.decode("latin-1"), method.decode("latin-1"), 413)
        log.info("refused a request body over {limit} bytes from {peer}",
                 limit=self.max_body, peer=str(channel.transport.getPeer()))
        _linger_and_close(channel)


def _linger_and_close(channel) -> None:
    """Stop parsing the connection; discard what still arrives for a moment, then close."""
    transport = channel.transport
    left = [LINGER_BYTES]

    def discard(data: bytes) -> None:
        left[0] -= len(data)
        if left[0] < 0:
            transport.abortConnection()

    channel.dataReceived = discard
    half_close = getattr(transport, "loseWriteConnection", None)
    if half_close is not None:
        half_close()  # FIN after the answer: the client knows nothing more is coming
    timer = channel.callLater(LINGER_SECONDS, transport.abortConnection)
    lost = channel.connectionLost

    def connection_lost(reason) -> None:
        if timer.active():
            timer.cancel()
        lost(reason)

    channel.connectionLost = connection_lost
