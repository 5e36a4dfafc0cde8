"""LISTEN_UNIX: a reverse proxy on this machine connects over a Unix socket only its group
may reach, and its X-Forwarded-For names the client; loopback TCP, which local sessions
share, is not trusted (should-fix 1)."""

from __future__ import annotations

import grp
import json
import os
import stat

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from streamspace.api.app import Api
from streamspace.context import AppContext
from streamspace.listeners import UnixListeningService
from streamspace.web import ControlPlaneWeb, make_site
from tests.support.sites import SECRET, ReadyDatabase


@implementer(IAgentEndpointFactory)
class _ToSocket:
    def __init__(self, path: str) -> None:
        self.path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(reactor, self.path)


@pytest.fixture
def site(db, tmp_path):
    ctx = AppContext(reactor=reactor, db=db, jwt_secret=SECRET, public_url="http://localhost",
                     state_dir=tmp_path)
    return make_site(ControlPlaneWeb(ReadyDatabase(), api=Api(ctx).app.resource()),
                     Api.app.url_map)


async def _failed_login(client, url: str, forwarded: str) -> int:
    response = await client.post(
        url + "/api/v1/auth/login", json.dumps({"username": "nobody", "password": "x"}).encode(),
        headers={"Content-Type": "application/json", "X-Forwarded-For": forwarded})
    await response.content()
    return response.code


@pytest_twisted.ensureDeferred
async def test_the_proxy_socket_names_the_client_and_loopback_does_not(site, db, tmp_path):
    path = str(tmp_path / "http.sock")
    unix = UnixListeningService(reactor, path, site, group="nogroup")
    unix.privilegedStartService()
    unix.startService()
    tcp = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
        via_proxy = HTTPClient(Agent.usingEndpointFactory(reactor, _ToSocket(path)))
        assert await _failed_login(via_proxy, "http://localhost", "198.51.100.7") == 401
        # a session on this machine sending its own header over loopback TCP
        url = f"http://127.0.0.1:{tcp.getHost().port}"
        assert await _failed_login(treq, url, "203.0.113.99") == 401
    finally:
        await unix.stopService()
        await tcp.stopListening()
    rows = await db.query("SELECT client_addr FROM audit_log WHERE action = 'auth.login' "
                          "ORDER BY id")
    assert [r[0] for r in rows] == ["198.51.100.7", "127.0.0.1"]
    assert not os.path.exists(path)  # removed on stop


@pytest_twisted.ensureDeferred
async def test_a_socket_left_by_a_killed_run_is_replaced(site, tmp_path):
    """A run killed hard leaves its socket file; the next one must still start (and must
    not take the socket of a server still running)."""
    import socket

    path = str(tmp_path / "http.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    unix = UnixListeningService(reactor, path, site)
    unix.privilegedStartService()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        # one that still answers is another server's: not taken over
        with pytest.raises(SystemExit, match="Address already in use"):
            UnixListeningService(reactor, path, site).privilegedStartService()
    finally:
        await unix.stopService()
