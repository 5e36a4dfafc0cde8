"""Just enough of the RFB client->server stream to count input events, in bounded memory.

Activity means a person typed or moved the mouse, not that bytes flowed (a viewer left
open sends framebuffer update requests forever). The parser follows the client side of the
handshake and the message framing. It keeps only the header of the message it is reading
(at most MAX_HELD bytes) and passes over every payload as it streams, so a ClientCutText of
any length (a 10 MiB paste) costs nothing and the framing is kept after it.

A message type it does not know means the framing is lost for good: from then on it
counts nothing (the relay still passes every byte), so a viewer it cannot follow never
keeps a session awake by merely watching.
"""

from __future__ import annotations

KEY_EVENT = 4
POINTER_EVENT = 5
QEMU = 255
QEMU_EXTENDED_KEY = 0

# The longest header the parser waits for: the 12-byte protocol version.
MAX_HELD = 12

# message type -> total length, for messages without a variable part
_FIXED = {0: 20, 3: 10, KEY_EVENT: 8, POINTER_EVENT: 6, 150: 10, 250: 4}
# message type -> header bytes needed to know the message's length
_HEADER = {2: 4, 6: 8, 248: 9, 251: 8, QEMU: 2}


class ClientStreamParser:
    def __init__(self) -> None:
        self._head = bytearray()  # the header being read, never more than MAX_HELD bytes
        self._skip = 0  # payload bytes still to pass over
        self._stage = "version"
        self.version = b""
        self.inputs = 0
        self.unparseable = ""  # why the parser stopped following the stream, if it did

    def buffered(self) -> int:
        """Bytes held: counted in the relay's per-tunnel buffer bound."""
        return len(self._head)

    def feed(self, data: bytes) -> int:
        """Consume client bytes; returns how many input events (key/pointer) they held."""
        if self.unparseable:
            return 0
        before = self.inputs
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            want = self._wanted()
            take = min(want - len(self._head), end - pos)
            self._head += data[pos:pos + take]
            pos += take
            if len(self._head) == self._wanted():  # may grow once the type is known
                self._complete()
                if self.unparseable:
                    break
        return self.inputs - before

    # -- the handshake, then messages ---------------------------------------------------

    def _wanted(self) -> int:
        stage = self._stage
        if stage == "version":
            return 12
        if stage != "messages":
            return 1  # security type, ClientInit
        if not self._head:
            return 1
        return _HEADER.get(self._head[0], 1)

    def _complete(self) -> None:
        head, stage = self._head, self._stage
        if stage == "version":
            if not head.startswith(b"RFB "):
                self._lose("not an RFB client")
                return
            self.version = bytes(head)
            # 3.3: the server picks the security type; the client sends nothing for it
            self._stage = "clientinit" if head[4:11] == b"003.003" else "security"
        elif stage == "security":
            if head[0] == 1:
                self._stage = "clientinit"
            elif head[0] == 2:
                self._stage, self._skip = "clientinit", 16  # the VNC auth response
            else:
                self._lose(f"security type {head[0]} is not followed")
                return
        elif stage == "clientinit":
            self._stage = "messages"
        else:
            length = self._length()
            if length is None:
                self._lose(f"unknown client message type {head[0]}")
                return
            self._skip = length - len(head)
            if self._is_input(length):
                self.inputs += 1
        head.clear()

    def _length(self) -> int | None:
        """Total length of the message whose header is held; None: unknown message."""
        b = self._head
        kind = b[0]
        if kind in _FIXED:
            return _FIXED[kind]
        if kind == 2:  # SetEncodings: type, pad, u16 count, s32 * count
            return 4 + 4 * int.from_bytes(b[2:4], "big")
        if kind == 6:  # ClientCutText: type, pad*3, s32 length (negative: extended format)
            return 8 + abs(int.from_bytes(b[4:8], "big", signed=True))
        if kind == 248:  # Fence: type, pad*3, u32 flags, u8 length, payload
            return 9 + b[8]
        if kind == 251:  # SetDesktopSize: type, pad, w, h, u8 screens, pad, 16 * screens
            return 8 + 16 * b[6]
        if kind == QEMU and b[1] == QEMU_EXTENDED_KEY:
            return 12
        return None

    def _is_input(self, length: int) -> bool:
        kind = self._head[0]
        return kind in (KEY_EVENT, POINTER_EVENT) or (kind == QEMU and length == 12)

    def _lose(self, why: str) -> None:
        self.unparseable = why
        self._head.clear()
        self._skip = 0
