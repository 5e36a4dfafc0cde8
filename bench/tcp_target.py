"""The TCP server both relays forward to (a stand-in for a VNC server, for measuring).

The first byte of a connection picks the mode:
  E  echo every byte back (round-trip latency)
  U  upload: count bytes; after `n` (8-byte big-endian prefix) bytes, answer b"OK"
  D  download: read an 8-byte count, then send that many bytes
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor

CHUNK = bytes(range(256)) * 256  # 64 KiB


class Target(protocol.Protocol):
    def connectionMade(self):
        self.mode = None
        self.buf = b""
        self.expected = None
        self.count = 0

    def dataReceived(self, data):
        if self.mode is None:
            self.mode, data = data[:1], data[1:]
        if self.mode == b"E":
            self.transport.write(data)
            return
        self.buf += data
        if self.expected is None:
            if len(self.buf) < 8:
                return
            self.expected = int.from_bytes(self.buf[:8], "big")
            self.buf = self.buf[8:]
            if self.mode == b"D":
                self._send(self.expected)
                return
        if self.mode == b"U":
            self.count += len(self.buf)
            self.buf = b""
            if self.count >= self.expected:
                self.transport.write(b"OK")

    def _send(self, n):
        producer = _Source(self.transport, n)
        self.transport.registerProducer(producer, False)


class _Source:
    def __init__(self, transport, n):
        self.transport, self.left = transport, n

    def resumeProducing(self):
        if self.left <= 0:
            self.transport.unregisterProducer()
            return
        n = min(self.left, len(CHUNK))
        self.left -= n
        self.transport.write(CHUNK[:n])

    def stopProducing(self):
        self.left = 0


if __name__ == "__main__":
    factory = protocol.Factory.forProtocol(Target)
    port = reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    print("listening", port.getHost().port, flush=True)
    reactor.run()
