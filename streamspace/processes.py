"""A ProcessProtocol for children we supervise: their output line by line, the last lines
kept for error messages, and a Deferred that fires with how they ended."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet import defer, protocol


class SupervisedProcess(protocol.ProcessProtocol):
    def __init__(self, on_line: Callable[[str], None] | None = None, keep: int = 40) -> None:
        self.on_line = on_line
        self.lines: deque[str] = deque(maxlen=keep)
        self.ended: defer.Deferred = defer.Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)
