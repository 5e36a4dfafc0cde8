"""The tunnels' data frames: what we write decodes as RFC 6455 frames, unmasking is the
same whatever the chunking, and direct writes never go around TLS."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from streamspace_common import wsframes
from streamspace_common.wsframes import Unmasker, client_frame, server_frame, write_now


def decode(frame: bytes) -> tuple[int, bytes]:
    """(opcode byte, payload) of one whole frame, unmasking it if masked (RFC 6455 5.2)."""
    b0, b1 = frame[0], frame[1]
    n, pos = b1 & 0x7F, 2
    if n == 126:
        n, pos = struct.unpack("!H", frame[2:4])[0], 4
    elif n == 127:
        n, pos = struct.unpack("!Q", frame[2:10])[0], 10
    if b1 & 0x80:
        key, pos = frame[pos:pos + 4], pos + 4
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(frame[pos:pos + n]))
    else:
        payload = bytes(frame[pos:pos + n])
    assert len(frame) == pos + n
    return b0, payload


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70_000]), st.randoms())
def test_frames_decode_at_every_length_boundary(n, rnd):
    payload = bytes(rnd.getrandbits(8) for _ in range(min(n, 300))) * (n // 300 + 1)
    payload = payload[:n]
    masked = client_frame(payload)
    assert decode(masked) == (0x82, payload)
    assert masked[1] & 0x80  # a client frame is masked
    frame, start = server_frame(payload)
    assert decode(bytes(frame)) == (0x82, payload) and bytes(frame[start:]) == payload
    assert not frame[1] & 0x80


def test_client_frames_get_a_fresh_key_each():
    a, b = client_frame(b"x" * 64), client_frame(b"x" * 64)
    assert a[2:6] != b[2:6]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.lists(st.integers(1, 3000), max_size=6))
def test_unmasking_in_chunks_equals_unmasking_whole(payload, cuts):
    key = os.urandom(4)
    expected = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    unmasker, out, start = Unmasker(key), b"", 0
    for end in sorted(set(c for c in cuts if c < len(payload))) + [len(payload)]:
        frame, at = server_frame(payload[start:end], unmasker)
        out += bytes(frame[at:])
        start = end
    assert out == expected


def test_native_masking_is_in_use():
    assert wsframes.NATIVE  # NVX is what makes these frames cheap (the start-up check warns)


class _Wrapper:
    """Stands for TLSMemoryBIOProtocol: forwards attribute lookups to the socket's transport."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_write_now_never_goes_around_a_tls_wrapper():
    inner = StringTransport()
    inner.writeSomeData = lambda data: (_ for _ in ()).throw(AssertionError("bypassed TLS"))
    tls = _Wrapper(inner)
    write_now(tls, bytearray(b"secret frame"))
    assert tls.written == [b"secret frame"] and inner.value() == b""
