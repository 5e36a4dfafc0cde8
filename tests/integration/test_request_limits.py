"""Request bodies are bounded while they arrive, on every route: an announced 1 GiB body
is refused before it is sent, an endless chunked body is cut at the limit, nothing is
buffered to disk, and the server keeps serving everyone else meanwhile."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from streamspace.api.body import MAX_BODY_BYTES
from tests.conftest import run
from tests.support.polling import until
from tests.support.sites import listen_site

GIB = 1024**3


@pytest.fixture
def site(db, tmp_path):
    url, port = listen_site(db, tmp_path)
    yield url, port.getHost().port
    run(_stop(port))


async def _stop(port):
    await port.stopListening()


class _RawClient(protocol.Protocol):
    """Sends `head` (and then, if `flood`, chunk after chunk while connected)."""

    def __init__(self, head: bytes, flood: bool = False) -> None:
        self.head, self.flood = head, flood
        self.received = b""
        self.sent = 0
        self.closed = defer.Deferred()
        self._loop = None

    def connectionMade(self) -> None:
        self.transport.write(self.head)
        if self.flood:
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"  # 64 KiB chunks, forever

            def more():
                if self.sent < 256 * 1024 * 1024:  # a safety stop far above any buffer
                    self.transport.write(chunk)
                    self.sent += len(chunk)

            self._loop = task.LoopingCall(more)
            self._loop.start(0.001)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.closed.callback(None)


async def _raw(port: int, head: bytes, flood: bool = False) -> _RawClient:
    client = _RawClient(head, flood)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        protocol.Factory.forProtocol(lambda: client))
    return client


def _response(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def _deleted_temp_files() -> set[str]:
    """Open files of this process (the server runs in it) that are unlinked temp files:
    what twisted.web's body buffering writes to."""
    tmp = tempfile.gettempdir()
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(tmp) and target.endswith("(deleted)"):
            found.add(f"{fd.name}:{target}")
    return found


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/v1/auth/login"), ("POST", "/api/v1/sessions"), ("GET", "/health"),
    ("PUT", "/index.html"), ("GET", "/api/v1/agent/connect?agent_id=a"),
    ("PATCH", "/api/v1/users/00000000-0000-0000-0000-000000000000"), ("POST", "/metrics"),
])
@pytest_twisted.ensureDeferred
async def test_an_announced_gibibyte_is_refused_before_it_is_sent(site, method, path):
    _, port = site
    client = await _raw(port, (f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                               f"Content-Type: application/json\r\n"
                               f"Expect: 100-continue\r\nContent-Length: {GIB}\r\n\r\n").encode())
    await until(lambda: client.closed.called, timeout=10, what="the server to close")
    assert b"100 Continue" not in client.received
    status, body = _response(client.received)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


@pytest_twisted.ensureDeferred
async def test_an_endless_chunked_body_is_cut_and_others_are_served(site):
    url, port = site
    before = _deleted_temp_files()
    client = await _raw(port, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n", flood=True)
    # while it streams (or is being cut off), the server answers others
    while not client.closed.called and client.sent < 4 * 1024 * 1024:
        assert _deleted_temp_files() - before == set(), "a body went to a temporary file"
        r = await treq.get(url + "/health")
        assert r.code == 200
        await r.content()
    await until(lambda: client.closed.called, timeout=15, what="the flood to be cut off")
    status, body = _response(client.received)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert _deleted_temp_files() - before == set()
    r = await treq.get(url + "/health")
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_bodies_under_the_limit_still_arrive_whole_also_chunked(site, db):
    url, port = site
    login = json.dumps({"username": "nobody", "password": "p" * (MAX_BODY_BYTES - 100)})
    client = await _raw(port, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n"
                              + b"%x\r\n%s\r\n0\r\n\r\n" % (len(login), login.encode()))
    await until(lambda: client.closed.called, timeout=10, what="the answer")
    # read whole and parsed: the password field is too long, so this is a clean 400
    assert client.received.startswith(b"HTTP/1.1 400 "), client.received[:200]
    assert b"`password` must be at most" in client.received
    r = await treq.post(url + "/api/v1/auth/login", data=login.encode(),
                        headers={"Content-Type": ["application/json"]})
    assert r.code == 400
    over = json.dumps({"username": "nobody", "password": "p" * MAX_BODY_BYTES})
    r = await treq.post(url + "/api/v1/auth/login", data=over.encode(),
                        headers={"Content-Type": ["application/json"]})
    assert r.code == 413
    assert json.loads(await r.content())["error"]["code"] == "payload_too_large"


@pytest_twisted.ensureDeferred
async def test_a_refused_pipelined_request_answers_after_the_one_before_it(site):
    """Nit 12: a 413 must not overtake the response to an earlier request on the same
    connection. The first request (a login: its password check runs on a thread) is
    still being answered when the oversized one arrives in the same packet."""
    _, port = site
    login = json.dumps({"username": "nobody", "password": "a wrong password"}).encode()
    client = await _raw(port, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(login), login)
                        + (b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % GIB))
    await until(lambda: client.closed.called, timeout=15, what="both answers")
    first, _, rest = client.received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 401 "), client.received[:300]
    assert b"HTTP/1.1 413 " in rest and b"invalid_credentials" in rest.split(b"HTTP/1.1 413")[0]
