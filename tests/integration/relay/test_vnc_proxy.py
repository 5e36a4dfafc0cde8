"""The VNC path end to end: viewer WebSocket -> control plane -> agent tunnel -> VNC server."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from streamspace.auth import tokens
from streamspace.relay.link import BUFFER_BOUND
from tests.support.http import poll
from tests.support.polling import settle, until
from tests.support.tcp_peers import PatternChecker, pattern
from tests.support.ws_tcp_bridge import Bridge, fresh_vnc_url
from tests.support.wsclient import connect

pytestmark = pytest.mark.slow

VNCDO = os.path.join(os.path.dirname(sys.executable), "vncdo")


async def audit_actions(stack, session_id):
    rows = await stack.service.getServiceNamed("database").db.query(
        "SELECT action, details FROM audit_log WHERE target_id = %s AND action LIKE 'vnc.%%' "
        "ORDER BY id", (session_id,))
    return rows


async def next_binary(client, timeout=10.0) -> bytes:
    d = client.messages.get()
    d.addTimeout(timeout, reactor)
    payload, is_binary = await d
    assert is_binary
    return payload


@pytest_twisted.ensureDeferred
async def test_real_vnc_client_sees_the_desktop_through_the_proxy(stack, tmp_path):
    """vncdotool completes the RFB handshake through the proxy and captures a frame of a
    real Xvnc desktop (an xterm): many distinct pixel values, not a blank screen."""
    await stack.start_agent("relay-real")
    session = await stack.create_session("terminal")
    sid = session["id"]
    await stack.wait_state(sid, "running")
    bridge = Bridge(fresh_vnc_url(stack.base, stack.ws_base, sid, stack.token))
    shot = tmp_path / "desktop.png"
    try:
        out, err, code = await getProcessOutputAndValue(
            VNCDO, ["-s", f"127.0.0.1::{bridge.port}", "--delay", "200", "capture", str(shot)],
            env=dict(os.environ), reactor=reactor)
    finally:
        bridge.close()
    assert code == 0, (out, err, bridge.errors, bridge.close_reasons)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 800)
    colours = image.getcolors(maxcolors=1 << 24)
    assert len(colours) > 20, len(colours)  # a drawn desktop, not a blank frame

    async def audited():
        return [a for a, _ in await audit_actions(stack, sid)] == ["vnc.connect", "vnc.disconnect"]

    await poll(audited, what="vnc.connect and vnc.disconnect audit rows")
    details = (await audit_actions(stack, sid))[1][1]
    assert details["bytes_to_browser"] > 1280 * 800  # at least one full frame came through
    assert details["bytes_to_session"] > 0 and details["duration_seconds"] >= 0


@pytest_twisted.ensureDeferred
async def test_every_way_in_without_the_right_token_or_owner_fails(stack, fake_agent):
    sid, server = await fake_agent.session_on(b"RFB 003.008\n")
    other, _ = await fake_agent.session_on(b"RFB 003.008\n")
    good = await stack.vnc_url(sid)
    secret = stack.env["JWT_SECRET"]
    admin_id = (await stack.request("GET", "/api/v1/auth/me"))[1]["id"]
    expired, _ = tokens.issue(secret, typ="vnc", sub=admin_id, now=reactor.seconds() - 600,
                              lifetime=60, sid=sid)
    forged, _ = tokens.issue("another-secret-" + "y" * 40, typ="vnc", sub=admin_id,
                             now=reactor.seconds(), lifetime=60, sid=sid)
    base = f"{stack.ws_base}/api/v1/vnc/{sid}"
    other_url = await stack.vnc_url(other)
    bob = await stack.create_user("bob")
    code, body = await stack.request("POST", f"/api/v1/sessions/{sid}/vnc-token", token=bob)
    assert code == 404  # another user's session is not even acknowledged
    bob_session_token = tokens.issue(secret, typ="vnc", sub=(await stack.request(
        "GET", "/api/v1/auth/me", token=bob))[1]["id"], now=reactor.seconds(), lifetime=60,
        sid=sid)[0]
    attempts = {
        "no token": (base, {}),
        "garbage": (base + "?token=garbage", {}),
        "expired": (base + f"?token={expired}", {}),
        "forged": (base + f"?token={forged}", {}),
        "login jwt": (base + f"?token={stack.token}", {}),
        "other session's token": (base + "?token=" + other_url.split("token=")[1], {}),
        "not the owner": (base + f"?token={bob_session_token}", {}),
        "foreign origin": (good, {"Origin": "https://evil.example"}),
    }
    for name, (url, headers) in attempts.items():
        client = await connect(url, headers=headers)
        code, reason = await client.wait_closed()
        assert code == 4001, (name, code, reason)
        assert reason, name
    # nothing was opened for any of them
    assert stack.proxy.pending == {} and stack.proxy.links == set()
    assert server.connections == []
    assert await audit_actions(stack, sid) == []


@pytest_twisted.ensureDeferred
async def test_session_not_running_is_refused(stack, fake_agent):
    sid, server = await fake_agent.session_on()
    url = await stack.vnc_url(sid)
    code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "hibernated"})
    await stack.wait_state(sid, "hibernated")
    client = await connect(url)
    code, reason = await client.wait_closed()
    assert code == 4009 and "hibernated" in reason
    assert server.connections == []
    code, body = await stack.request("POST", f"/api/v1/sessions/{sid}/vnc-token")
    assert code == 409


@pytest_twisted.ensureDeferred
async def test_bytes_flow_both_ways_unchanged(stack, fake_agent):
    sid, server = await fake_agent.session_on(b"RFB 003.008\n")
    client = await connect(await stack.vnc_url(sid), protocols=["binary"])
    assert await next_binary(client) == b"RFB 003.008\n"
    payload = b"".join(pattern(i, 50_000) for i in range(0, 300_000, 50_000))
    for i in range(0, len(payload), 50_000):
        client.send_raw(payload[i:i + 50_000], binary=True)
    await until(lambda: len(server.connections[0].received) >= len(payload), timeout=20,
               what="the VNC server to receive every byte")
    assert bytes(server.connections[0].received) == payload
    client.close()
    await client.wait_closed()
    await until(lambda: server.connections[0].closed, timeout=20, what="the tunnel's TCP side to close")
    await until(lambda: not stack.proxy.links, timeout=20, what="the link to be freed")


@pytest_twisted.ensureDeferred
async def test_backpressure_bounds_buffers_and_loses_nothing(stack, fake_agent):
    """A viewer that stops reading while the VNC server floods: the control plane buffers
    at most BUFFER_BOUND bytes for the tunnel, the server is held back by TCP, and once the
    viewer reads again every byte arrives, in order."""
    total = 48 * 1024 * 1024
    sid, server = await fake_agent.session_on()
    client = await connect(await stack.vnc_url(sid))
    await until(lambda: bool(stack.proxy.links) and bool(server.connections), timeout=20,
               what="the tunnel to be linked")
    link = next(iter(stack.proxy.links))
    client.protocol.transport.pauseProducing()  # the viewer stops reading
    flooder = server.connections[0].flood(reactor, total)
    peak = 0

    def sample():
        nonlocal peak
        peak = max(peak, link.buffered())
        return flooder.sent

    await settle(sample, quiet=0.7, timeout=30)
    assert flooder.sent < total, "the flood was never held back"
    assert peak <= BUFFER_BOUND, (peak, BUFFER_BOUND)
    assert link.max_buffered <= BUFFER_BOUND

    checker = PatternChecker()
    client.protocol.transport.resumeProducing()
    while checker.offset < total:
        checker.feed(await next_binary(client, timeout=20))
    assert checker.ok and checker.offset == total, checker.first_bad
    assert link.max_buffered <= BUFFER_BOUND
    client.close()


@pytest_twisted.ensureDeferred
async def test_ten_viewers_on_ten_sessions_each_get_their_own_bytes(stack, fake_agent):
    n, size = 10, 2 * 1024 * 1024
    sessions = []
    for i in range(n):
        sid, server = await fake_agent.session_on(f"SESSION-{i:02d}|".encode())
        sessions.append((sid, server))
    clients = [await connect(await stack.vnc_url(sid)) for sid, _ in sessions]
    await until(lambda: all(s.connections for _, s in sessions), timeout=20, what="all tunnels up")
    for i, (_, server) in enumerate(sessions):
        server.connections[0].flood(reactor, size)
        clients[i].send_raw(f"VIEWER-{i:02d}|".encode() * 1000, binary=True)

    async def receive(i, client):
        greeting = f"SESSION-{i:02d}|".encode()
        got = b""
        while len(got) < len(greeting):
            got += await next_binary(client, timeout=30)
        assert got[:len(greeting)] == greeting, (i, got[:20])
        checker = PatternChecker()
        checker.feed(got[len(greeting):])
        while checker.offset < size:
            checker.feed(await next_binary(client, timeout=30))
        assert checker.ok and checker.offset == size, (i, checker.first_bad)

    await defer.gatherResults([defer.Deferred.fromCoroutine(receive(i, c))
                               for i, c in enumerate(clients)])
    for i, (_, server) in enumerate(sessions):
        expected = f"VIEWER-{i:02d}|".encode() * 1000
        await until(lambda s=server, e=expected: len(s.connections[0].received) >= len(e), timeout=20,
                   what=f"server {i} to receive its viewer's bytes")
        assert bytes(server.connections[0].received) == expected
    for c in clients:
        c.close()


@pytest_twisted.ensureDeferred
async def test_tunnel_leg_that_never_arrives_times_out_cleanly(stack, fake_agent):
    sid, server = await fake_agent.session_on()
    tunnels = fake_agent.service.tunnels
    original_open = tunnels.open
    stuck = defer.Deferred()
    tunnels.open = lambda *a, **k: stuck  # the agent is stuck and never opens the tunnel
    import streamspace.relay.proxy as proxy_mod

    saved, proxy_mod.TUNNEL_ARRIVAL_TIMEOUT = proxy_mod.TUNNEL_ARRIVAL_TIMEOUT, 1.5
    try:
        client = await connect(await stack.vnc_url(sid))
        code, reason = await client.wait_closed(timeout=15)
        assert code == 4504 and "did not open the tunnel" in reason
        assert stack.proxy.pending == {} and not stack.proxy.links
    finally:
        proxy_mod.TUNNEL_ARRIVAL_TIMEOUT = saved
        tunnels.open = original_open
        stuck.errback(ConnectionError("gave up"))  # the agent recovers and reports failure
    client = await connect(await stack.vnc_url(sid))  # and a reconnect works
    await until(lambda: bool(stack.proxy.links), timeout=20, what="the retry to link")
    client.close()


@pytest_twisted.ensureDeferred
async def test_control_plane_closing_closes_tunnels_and_reconnect_works(stack, fake_agent):
    sid, server = await fake_agent.session_on(b"RFB 003.008\n")
    client = await connect(await stack.vnc_url(sid))
    assert await next_binary(client) == b"RFB 003.008\n"
    await stack.restart()
    code, _ = await client.wait_closed()
    assert code is not None
    await until(lambda: server.connections[0].closed, timeout=20, what="the agent to close its side")
    await stack.wait_agent("relay-agent", "online", timeout=20)
    await stack.wait_state(sid, "running")
    client = await connect(await stack.vnc_url(sid))
    assert await next_binary(client) == b"RFB 003.008\n"
    client.close()


@pytest_twisted.ensureDeferred
async def test_agent_killed_mid_stream_cleans_up(stack):
    agent = await stack.start_agent("relay-kill")
    session = await stack.create_session("terminal")
    await stack.wait_state(session["id"], "running")
    client = await connect(await stack.vnc_url(session["id"]))
    banner = await next_binary(client)
    assert banner.startswith(b"RFB 003.")
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    code, reason = await client.wait_closed(timeout=20)
    await until(lambda: not stack.proxy.links and not stack.proxy.pending, timeout=20,
               what="the control plane to free the tunnel")
    # a new agent process takes over; new sessions stream again
    code, body = await stack.request("POST", "/api/v1/agents/relay-kill/token")
    await stack.start_agent("relay-kill", token=body["token"])
    fresh = await stack.create_session("terminal")
    await stack.wait_state(fresh["id"], "running")
    client = await connect(await stack.vnc_url(fresh["id"]))
    assert (await next_binary(client)).startswith(b"RFB 003.")
    client.close()


@pytest_twisted.ensureDeferred
async def test_input_events_update_last_activity(stack, fake_agent):
    sid, server = await fake_agent.session_on(b"RFB 003.008\n")
    before = (await stack.session(sid))["last_activity"]
    client = await connect(await stack.vnc_url(sid))
    await next_binary(client)
    # handshake and framebuffer requests only: a viewer watching is not activity
    client.send_raw(b"RFB 003.008\n\x01\x01" + bytes([3, 1, 0, 0, 0, 0, 5, 0, 3, 32]),
                    binary=True)
    await until(lambda: len(server.connections[0].received) >= 24, timeout=20, what="handshake bytes")
    assert (await stack.session(sid))["last_activity"] == before
    client.send_raw(bytes([4, 1, 0, 0, 0, 0, 0, 0x61]), binary=True)  # KeyEvent "a"

    async def touched():
        return (await stack.session(sid))["last_activity"] > before

    await poll(touched, what="last_activity to move after a key press")
    client.close()


@pytest_twisted.ensureDeferred
async def test_tunnel_without_traffic_is_closed_after_vnc_proxy_timeout(migrated_dsn):
    from tests.integration.relay.conftest import InProcessAgent
    from tests.support.stack import make_stack

    stack = make_stack(migrated_dsn, VNC_PROXY_TIMEOUT="2s")
    await stack.start()
    agent = InProcessAgent(stack, "idle-agent")
    try:
        await agent.start()
        sid, server = await agent.session_on()
        client = await connect(await stack.vnc_url(sid))
        code, reason = await client.wait_closed(timeout=15)
        assert "VNC_PROXY_TIMEOUT" in reason
        await until(lambda: server.connections[0].closed, timeout=20, what="the agent side to close")
        assert not stack.proxy.links

        async def audited():
            rows = await audit_actions(stack, sid)
            return rows if [a for a, _ in rows] == ["vnc.connect", "vnc.disconnect"] else None

        rows = await poll(audited, what="the disconnect to be audited")
        assert "VNC_PROXY_TIMEOUT" in rows[1][1]["reason"]
    finally:
        await agent.stop()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_idle_sessions_are_hibernated_through_the_queue(migrated_dsn):
    from tests.integration.relay.conftest import InProcessAgent
    from tests.support.stack import make_stack

    stack = make_stack(migrated_dsn, SESSION_IDLE_TIMEOUT="2s")
    await stack.start()
    agent = InProcessAgent(stack, "cull-agent")
    try:
        await agent.start()
        sid, _ = await agent.session_on()
        await stack.wait_state(sid, "hibernated", timeout=20)
        assert ("hibernate_session", sid) in agent.driver.calls
        events = await stack.service.getServiceNamed("database").db.query(
            "SELECT state, message FROM session_events WHERE session_id = %s ORDER BY id",
            (sid,))
        assert ("hibernating", "idle: hibernating") in [tuple(e) for e in events]
    finally:
        await agent.stop()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_several_viewers_on_one_session_each_get_their_own_tunnel(stack, fake_agent):
    """A shared desktop: every viewer has its own tunnel and TCP connection to the server."""
    sid, server = await fake_agent.session_on(b"RFB 003.008\n")
    viewers = [await connect(await stack.vnc_url(sid)) for _ in range(3)]
    for v in viewers:
        assert await next_binary(v) == b"RFB 003.008\n"
    assert len(stack.proxy.links) == 3 and len(server.connections) == 3
    for i, v in enumerate(viewers):
        v.send_raw(f"viewer-{i}".encode(), binary=True)
    await until(lambda: sorted(bytes(c.received) for c in server.connections)
                == [b"viewer-0", b"viewer-1", b"viewer-2"],
                timeout=20, what="each viewer's bytes on its own connection")
    viewers[0].close()
    await until(lambda: len(stack.proxy.links) == 2, timeout=20, what="only that tunnel to close")
    for v in viewers[1:]:
        v.close()
