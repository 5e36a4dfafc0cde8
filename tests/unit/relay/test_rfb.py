"""The RFB client-stream parser counts input events, not bytes, across any chunking."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from streamspace.relay.rfb import ClientStreamParser

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
    assert not parser.lost


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_counts_inputs_whatever_the_chunking(cuts):
    parser = ClientStreamParser()
    points = sorted(set(cuts)) + [len(STREAM)]
    total, start = 0, 0
    for end in points:
        total += parser.feed(STREAM[start:end])
        start = end
    assert total == INPUTS and not parser.lost


def test_framebuffer_requests_alone_are_not_activity():
    parser = ClientStreamParser()
    assert parser.feed(HANDSHAKE_38 + FB_UPDATE_REQUEST * 50) == 0


def test_rfb_33_and_vnc_auth_handshakes():
    p33 = ClientStreamParser()
    assert p33.feed(b"RFB 003.003\n" + b"\x01" + KEY) == 1
    pauth = ClientStreamParser()
    assert pauth.feed(b"RFB 003.008\n" + b"\x02" + b"r" * 16 + b"\x01" + POINTER) == 1


def test_unknown_message_falls_back_to_counting_chunks():
    parser = ClientStreamParser()
    parser.feed(HANDSHAKE_38 + bytes([99, 1, 2, 3]))
    assert parser.lost
    assert parser.feed(b"anything") == 1  # safe side: a session in use is never culled
