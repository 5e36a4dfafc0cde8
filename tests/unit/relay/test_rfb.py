"""The RFB client-stream parser counts input events, not bytes, across any chunking, and
holds at most a header whatever the stream."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from streamspace.relay.rfb import MAX_HELD, ClientStreamParser

HANDSHAKE_38 = b"RFB 003.008\n" + b"\x01" + b"\x01"  # version, security None, ClientInit
SET_ENCODINGS = struct.pack(">BxH3i", 2, 3, 0, 1, -223)
FB_UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 1280, 800)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 20)
CUT_TEXT = struct.pack(">BxxxI", 6, 5) + b"hello"
SET_PIXEL_FORMAT = bytes([0]) + b"\0" * 19
FENCE = struct.pack(">BxxxIB", 248, 0, 4) + b"abcd"
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)

STREAM = (HANDSHAKE_38 + SET_PIXEL_FORMAT + SET_ENCODINGS + FB_UPDATE_REQUEST + KEY + KEY +
          POINTER + CUT_TEXT + FENCE + QEMU_KEY + FB_UPDATE_REQUEST + POINTER)
INPUTS = 5  # two keys, two pointer events, one QEMU extended key event


def test_counts_inputs_in_one_chunk():
    parser = ClientStreamParser()
    assert parser.feed(STREAM) == INPUTS
    assert not parser.unparseable


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_counts_inputs_whatever_the_chunking(cuts):
    parser = ClientStreamParser()
    points = sorted(set(cuts)) + [len(STREAM)]
    total, start = 0, 0
    for end in points:
        total += parser.feed(STREAM[start:end])
        start = end
    assert total == INPUTS and not parser.unparseable


def test_framebuffer_requests_alone_are_not_activity():
    parser = ClientStreamParser()
    assert parser.feed(HANDSHAKE_38 + FB_UPDATE_REQUEST * 50) == 0


def test_rfb_33_and_vnc_auth_handshakes():
    p33 = ClientStreamParser()
    assert p33.feed(b"RFB 003.003\n" + b"\x01" + KEY) == 1
    pauth = ClientStreamParser()
    assert pauth.feed(b"RFB 003.008\n" + b"\x02" + b"r" * 16 + b"\x01" + POINTER) == 1


def test_unknown_message_stops_counting_instead_of_counting_every_chunk():
    """Once the framing is lost nothing more counts: a viewer the parser cannot follow
    never keeps its session awake by watching."""
    parser = ClientStreamParser()
    parser.feed(HANDSHAKE_38 + bytes([99, 1, 2, 3]))
    assert "99" in parser.unparseable
    assert parser.feed(KEY + b"anything") == 0 and parser.buffered() == 0


def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=512, max_value=300_000))
def test_a_10_mib_paste_is_skipped_in_bounded_memory_and_framing_is_kept(chunk):
    """A ClientCutText of 10 MiB, in any chunking: the parser never holds more than a
    header, counts no input for it, and still counts the key press after it."""
    paste = struct.pack(">BxxxI", 6, 10 * 1024 * 1024) + b"p" * (10 * 1024 * 1024)
    parser = ClientStreamParser()
    assert parser.feed(HANDSHAKE_38 + FB_UPDATE_REQUEST) == 0
    counted, peak = 0, 0
    for piece in _chunks(paste + FB_UPDATE_REQUEST * 3 + KEY, chunk):
        counted += parser.feed(piece)
        peak = max(peak, parser.buffered())
    assert counted == 1 and not parser.unparseable
    assert peak <= MAX_HELD


def test_extended_clipboard_negative_length_is_framed():
    extended = struct.pack(">Bxxxi", 6, -9) + b"\x10\x00\x00\x01" + b"abcde"
    parser = ClientStreamParser()
    assert parser.feed(HANDSHAKE_38 + extended + POINTER) == 1 and not parser.unparseable


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=512))
def test_whatever_the_bytes_the_parser_holds_at_most_a_header(garbage, chunk):
    parser = ClientStreamParser()
    for stream in (garbage, HANDSHAKE_38 + garbage):
        for piece in _chunks(stream, chunk):
            parser.feed(piece)
            assert parser.buffered() <= MAX_HELD
