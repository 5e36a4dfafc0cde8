"""VNC tunnels through the agent over real sockets: byte-for-byte relay both ways,
backpressure both ways with bounded buffering, close propagation, refusals."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from agent.platforms.base import VncEndpoint
from agent.tunnel import AGENT_BUFFER_BOUND, MAX_FRAME  # the agent's bound per tunnel, frames
from tests.integration.agent.conftest import block
from tests.support.fake_driver import FakeDriver
from tests.support.polling import settle, until
from tests.support.tcp_peers import PatternChecker, PeerServer

FLOOD = 48 * 1024 * 1024  # far more than every kernel socket buffer on the path


@pytest.fixture
def vnc_server():
    server = PeerServer(greeting=b"RFB 003.008\n")
    port = server.listen(reactor)
    yield server, port
    block(server.close())


async def open_tunnel(cp, agents, vnc_port):
    driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", vnc_port))
    driver.add_running("s1")
    agent = agents.start(driver)
    await cp.wait_connected()
    tunnel_id, secret = cp.allow_tunnel()
    cid = cp.command("vnc_connect", "s1", {"tunnel_id": tunnel_id, "secret": secret})
    outcome = await cp.outcome(cid)
    assert outcome["type"] == "complete", outcome
    assert outcome["payload"]["result"] == {}
    return agent, cp.tunnels[tunnel_id], agent.tunnels.tunnels[tunnel_id]


def reading(transport) -> bool:
    return transport in reactor.getReaders()


@pytest_twisted.ensureDeferred
async def test_bytes_flow_both_ways_byte_for_byte(control_plane, agents, vnc_server):
    server, port = vnc_server
    agent, leg, tunnel = await open_tunnel(control_plane, agents, port)
    await until(lambda: bytes(leg.received) == b"RFB 003.008\n", 5, what="the banner")
    peer = server.connections[0]
    leg.sendMessage(b"RFB 003.008\n", isBinary=True)
    await until(lambda: bytes(peer.received) == b"RFB 003.008\n", 5, what="client version")
    # every byte value, both directions, in sizes that straddle the 64 KiB frame cap
    blob = bytes(range(256)) * 1200  # 300 KiB
    peer.transport.write(blob)
    leg.sendMessage(blob[:60000], isBinary=True)
    leg.sendMessage(blob[60000:120000], isBinary=True)
    await until(lambda: len(leg.received) == 12 + len(blob), 5, what="VNC->WS bytes")
    await until(lambda: len(peer.received) == 12 + 120000, 5, what="WS->VNC bytes")
    assert bytes(leg.received[12:]) == blob
    assert bytes(peer.received[12:]) == blob[:120000]
    assert leg.max_frame <= MAX_FRAME
    assert tunnel.bytes_from_vnc == 12 + len(blob)
    assert tunnel.bytes_to_vnc == 12 + 120000
    # the control plane may send messages up to 256 KiB (e.g. a big clipboard paste)
    leg.sendMessage(blob[:200_000], isBinary=True)
    await until(lambda: len(peer.received) == 12 + 320000, 5, what="a 200 KB message")
    assert bytes(peer.received[12 + 120000:]) == blob[:200_000]


@pytest_twisted.ensureDeferred
async def test_websocket_reader_stalls_then_everything_arrives_in_order(
        control_plane, agents, vnc_server):
    server, port = vnc_server
    server.greeting = b""
    agent, leg, tunnel = await open_tunnel(control_plane, agents, port)
    peer = server.connections[0]
    leg.checker = PatternChecker()
    leg.pause_reading()
    flooder = peer.flood(reactor, FLOOD)
    peak = [0]

    def observe():
        peak[0] = max(peak[0], tunnel.buffered_bytes())

    await settle(lambda: flooder.sent, quiet=0.3, timeout=20, observe=observe)
    # the flood stalled: the agent stopped reading the VNC socket instead of buffering
    assert not flooder.done and flooder.paused
    assert not reading(tunnel.vnc.transport)
    assert peak[0] <= AGENT_BUFFER_BOUND, peak[0]
    leg.resume_reading()
    await until(lambda: leg.checker.offset == FLOOD, 30, what="the whole flood",
                interval=0.02)
    assert leg.checker.ok, leg.checker.first_bad
    assert leg.max_frame <= MAX_FRAME
    assert peak[0] <= AGENT_BUFFER_BOUND


@pytest_twisted.ensureDeferred
async def test_vnc_reader_stalls_then_everything_arrives_in_order(
        control_plane, agents, vnc_server):
    server, port = vnc_server
    server.greeting = b""
    agent, leg, tunnel = await open_tunnel(control_plane, agents, port)
    peer = server.connections[0]
    peer.checker = PatternChecker()
    peer.pause_reading()
    flooder = leg.flood(FLOOD)
    peak = [0]

    def observe():
        peak[0] = max(peak[0], tunnel.buffered_bytes())

    await settle(lambda: flooder.sent, quiet=0.3, timeout=20, observe=observe)
    assert not flooder.done and flooder.paused
    assert not reading(tunnel.ws.transport)
    assert peak[0] <= AGENT_BUFFER_BOUND, peak[0]
    peer.resume_reading()
    await until(lambda: peer.checker.offset == FLOOD, 30, what="the whole flood",
                interval=0.02)
    assert peer.checker.ok, peer.checker.first_bad


@pytest_twisted.ensureDeferred
async def test_either_side_closing_closes_the_other(control_plane, agents, vnc_server):
    server, port = vnc_server
    agent, leg, tunnel = await open_tunnel(control_plane, agents, port)
    server.connections[0].transport.loseConnection()
    await until(lambda: leg.closed is not None, 5, what="the WebSocket leg closing")
    assert leg.closed[0] == 1000
    await until(lambda: not agent.tunnels.tunnels, 5, what="the tunnel forgotten")
    # the other way round: the control plane closes, the VNC connection goes
    agent2_leg_id, secret = control_plane.allow_tunnel()
    cid = control_plane.command("vnc_connect", "s1", {
        "tunnel_id": agent2_leg_id, "secret": secret,
})
    assert (await control_plane.outcome(cid))["type"] == "complete"
    control_plane.tunnels[agent2_leg_id].sendClose(1000, "viewer left")
    await until(lambda: server.connections[1].closed, 5, what="the VNC connection closing")
    await until(lambda: not agent.tunnels.tunnels, 5, what="the tunnel forgotten")


@pytest_twisted.ensureDeferred
async def test_vnc_disconnect_closes_the_tunnel(control_plane, agents, vnc_server):
    server, port = vnc_server
    agent, leg, tunnel = await open_tunnel(control_plane, agents, port)
    cid = control_plane.command("vnc_disconnect", "s1", {"tunnel_id": tunnel.tunnel_id})
    assert (await control_plane.outcome(cid))["type"] == "complete"
    await until(lambda: leg.closed is not None and server.connections[0].closed, 5,
                what="both legs closed")
    assert not agent.tunnels.tunnels


@pytest_twisted.ensureDeferred
async def test_refusals_fail_the_command_with_a_reason(control_plane, agents, vnc_server):
    server, port = vnc_server
    driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", port))
    driver.add_running("s1")
    agent = agents.start(driver)
    await control_plane.wait_connected()
    # wrong secret: the control plane refuses the upgrade (403)
    tunnel_id, _ = control_plane.allow_tunnel()
    cid = control_plane.command("vnc_connect", "s1", {"tunnel_id": tunnel_id, "secret": "wrong"})
    failed = await control_plane.outcome(cid)
    assert failed["type"] == "failed" and "403" in failed["payload"]["reason"]
    await until(lambda: server.connections and server.connections[-1].closed, 5,
                what="the VNC connection released")
    # a session this agent does not run has no endpoint: nothing is dialled
    dialled = len(server.connections)
    tunnel_id, secret = control_plane.allow_tunnel()
    cid = control_plane.command("vnc_connect", "s-other", {"tunnel_id": tunnel_id,
                                                            "secret": secret})
    failed = await control_plane.outcome(cid)
    assert failed["type"] == "failed"
    assert "the session is not running on this agent" in failed["payload"]["reason"]
    assert len(server.connections) == dialled
    assert not agent.tunnels.tunnels
