"""wss:// control planes: certificates are verified, a private CA can be trusted, and both
the control channel and tunnels run over TLS."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from agent.endpoints import ControlPlaneAddress
from agent.platforms.base import VncEndpoint
from tests.integration.agent.conftest import block
from tests.support.fake_driver import FakeDriver
from tests.support.polling import until
from tests.support.tcp_peers import PeerServer
from tests.support.tls_certs import make_ca_and_server, server_options


@pytest.fixture
def tls_files(tmp_path):
    return make_ca_and_server(tmp_path / "tls")


@pytest.fixture
def tls_control_plane(control_plane, tls_files):
    _, cert, key = tls_files
    port = control_plane.port
    block(control_plane.stop())
    control_plane.start(port, tls=server_options(cert, key))
    return control_plane


@pytest_twisted.ensureDeferred
async def test_wss_with_a_private_ca_carries_the_channel_and_tunnels(tls_control_plane,
                                                                     agents, tls_files):
    cp = tls_control_plane
    ca, _, _ = tls_files
    vnc = PeerServer(greeting=b"RFB 003.008\n")
    port = vnc.listen(reactor)
    try:
        driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", port))
        driver.add_running("s1")
        address = ControlPlaneAddress.parse(f"https://127.0.0.1:{cp.port}", str(ca))
        agents.start(driver, address=address)
        await cp.wait_connected()
        tunnel_id, secret = cp.allow_tunnel()
        cid = cp.command("vnc_connect", "s1", {"tunnel_id": tunnel_id, "secret": secret})
        assert (await cp.outcome(cid))["type"] == "complete"
        leg = cp.tunnels[tunnel_id]
        await until(lambda: bytes(leg.received) == b"RFB 003.008\n", 5, what="the banner")
        leg.sendMessage(b"RFB 003.008\n", isBinary=True)
        await until(lambda: bytes(vnc.connections[0].received) == b"RFB 003.008\n", 5,
                    what="bytes to the VNC server")
    finally:
        await vnc.close()


@pytest_twisted.ensureDeferred
async def test_an_untrusted_certificate_is_refused(tls_control_plane, agents):
    cp = tls_control_plane
    address = ControlPlaneAddress.parse(f"wss://127.0.0.1:{cp.port}")  # system CAs only
    agent = agents.start(FakeDriver(), address=address)
    await until(lambda: agent.channel.failures >= 2, 10, what="failed TLS attempts")
    assert cp.connections == 0 and cp.frames == []
