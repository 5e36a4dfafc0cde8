"""Just enough of the RFB client->server stream to count input events.

Activity means a person typed or moved the mouse, not that bytes flowed (a viewer left
open receives framebuffer updates forever). The parser follows the client side of the
handshake and the message framing; anything it does not understand switches it to
`lost` mode, where every chunk counts as activity (safe: the session is not culled).
"""

from __future__ import annotations

KEY_EVENT = 4
POINTER_EVENT = 5

# message type -> fixed total length, for messages without a variable part
_FIXED = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10, 250: 4}


class ClientStreamParser:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.stage = "version"
        self.version = b""
        self.inputs = 0
        self.lost = False

    def feed(self, data: bytes) -> int:
        """Consume client bytes; returns how many input events (key/pointer) they held."""
        if self.lost:
            return 1 if data else 0
        self.buffer += data
        before = self.inputs
        while self._step():
            pass
        if len(self.buffer) > 1 << 20:  # never hold more than a message's worth
            self._lose()
            return 1
        return self.inputs - before

    def _take(self, n: int) -> bytes | None:
        if len(self.buffer) < n:
            return None
        chunk = bytes(self.buffer[:n])
        del self.buffer[:n]
        return chunk

    def _lose(self) -> None:
        self.lost = True
        self.buffer.clear()

    def _step(self) -> bool:
        if self.stage == "version":
            v = self._take(12)
            if v is None:
                return False
            if not v.startswith(b"RFB "):
                self._lose()
                return False
            self.version = v
            # 3.3: the server picks the security type; the client sends nothing for it
            self.stage = "clientinit" if v[4:11] == b"003.003" else "security"
            return True
        if self.stage == "security":
            t = self._take(1)
            if t is None:
                return False
            if t[0] == 1:
                self.stage = "clientinit"
            elif t[0] == 2:
                self.stage = "vncauth"
            else:
                self._lose()
                return False
            return True
        if self.stage == "vncauth":
            if self._take(16) is None:
                return False
            self.stage = "clientinit"
            return True
        if self.stage == "clientinit":
            if self._take(1) is None:
                return False
            self.stage = "messages"
            return True
        return self._message()

    def _message(self) -> bool:
        if not self.buffer:
            return False
        kind = self.buffer[0]
        length = self._length(kind)
        if length is None:
            return False
        if length < 0:
            self._lose()
            return False
        if self._take(length) is None:
            return False
        if kind in (KEY_EVENT, POINTER_EVENT):
            self.inputs += 1
        elif kind == 255 and length == 12:  # QEMU extended key event
            self.inputs += 1
        return True

    def _length(self, kind: int) -> int | None:
        """Total length of the message at the buffer's head; None: need more; -1: unknown."""
        b = self.buffer
        if kind in _FIXED:
            return _FIXED[kind]
        if kind == 2:  # SetEncodings: type, pad, u16 count, s32 * count
            return None if len(b) < 4 else 4 + 4 * int.from_bytes(b[2:4], "big")
        if kind == 6:  # ClientCutText: type, pad*3, u32 length (may be negative: extended)
            if len(b) < 8:
                return None
            n = int.from_bytes(b[4:8], "big", signed=True)
            return 8 + abs(n)
        if kind == 248:  # Fence: type, pad*3, u32 flags, u8 length, payload
            return None if len(b) < 9 else 9 + b[8]
        if kind == 251:  # SetDesktopSize: type, pad, w, h, u8 screens, pad, 16 * screens
            return None if len(b) < 8 else 8 + 16 * b[6]
        if kind == 255:  # QEMU: subtype 0 = extended key event (12 bytes)
            if len(b) < 2:
                return None
            return 12 if b[1] == 0 else -1
        return -1
