"""The Engine API client when the engine misbehaves: silent, absent, or sending garbage in
a stream. A real dockerd does none of these on purpose, so small servers on a Unix socket
stand for an engine that hangs, is not there, or whose stream is corrupted; the real
engine's answers are tested in the other modules of this package."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.web import resource, server

from agent.platforms.docker.address import EngineAddress
from agent.platforms.docker.engine import MAX_STREAM_LINE, EngineClient, EngineError


class _Silent(protocol.Protocol):
    """Accepts, reads, never answers: an engine that hangs."""


class _Stream(resource.Resource):
    isLeaf = True

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self.chunks = chunks

    def render_GET(self, request):  # noqa: N802
        for chunk in self.chunks:
            request.write(chunk)
        request.finish()
        return server.NOT_DONE_YET


async def serve(path, factory):
    return await UNIXServerEndpoint(reactor, str(path)).listen(factory)


def client_for(path) -> EngineClient:
    client = EngineClient(reactor, EngineAddress.parse(f"unix://{path}"))
    client.version = (1, 41)
    return client


@pytest_twisted.ensureDeferred
async def test_a_silent_engine_is_a_timeout_and_a_cancel_is_a_cancel(tmp_path):
    port = await serve(tmp_path / "silent.sock", protocol.Factory.forProtocol(_Silent))
    client = client_for(tmp_path / "silent.sock")
    try:
        with pytest.raises(EngineError, match=r"did not answer GET /containers/json within "
                                              r"0\.3 s"):
            await client.call("GET", "/containers/json", timeout=0.3)
        pending = defer.ensureDeferred(client.call("GET", "/containers/json", timeout=30))
        reactor.callLater(0.1, pending.cancel)
        with pytest.raises(defer.CancelledError):
            await pending
    finally:
        await client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_absent_engine_says_where_it_looked(tmp_path):
    client = client_for(tmp_path / "nobody.sock")
    with pytest.raises(EngineError, match=f"the Docker engine at unix://{tmp_path}/nobody.sock "
                                          "did not answer"):
        await client.negotiate()


@pytest.mark.parametrize("chunks, problem", [
    ([b'{"Action": "die"}\n', b"not json\n"], "invalid JSON"),
    ([b'{"a": "' + b"x" * (MAX_STREAM_LINE + 10)], "oversized stream object"),
])
@pytest_twisted.ensureDeferred
async def test_a_corrupt_stream_ends_with_an_error_after_what_was_good(tmp_path, chunks,
                                                                       problem):
    port = await serve(tmp_path / "engine.sock", server.Site(_Stream(chunks)))
    client = client_for(tmp_path / "engine.sock")
    seen = []
    try:
        with pytest.raises(EngineError, match=problem):
            await client.stream("GET", "/events", seen.append)
    finally:
        await client.close()
        await port.stopListening()
    assert seen == ([{"Action": "die"}] if len(chunks) == 2 else [])


@pytest_twisted.ensureDeferred
async def test_a_stream_split_anywhere_is_read_whole(tmp_path):
    payload = b'{"id": "a", "status": "Downloading"}\n{"id": "b"}\n{"last": true}'
    chunks = [payload[i:i + 7] for i in range(0, len(payload), 7)]
    port = await serve(tmp_path / "engine.sock", server.Site(_Stream(chunks)))
    client = client_for(tmp_path / "engine.sock")
    seen = []
    try:
        await client.stream("GET", "/images/create", seen.append)
    finally:
        await client.close()
        await port.stopListening()
    assert seen == [{"id": "a", "status": "Downloading"}, {"id": "b"}, {"last": True}]
