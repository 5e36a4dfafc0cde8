"""Viewer limits and bursts, end to end: the real control plane and PostgreSQL, the real
agent code (executor, tunnel manager, control channel) in this process with a test TCP
server as the session's VNC server, and real WebSocket viewers on loopback."""

from __future__ import annotations

import resource

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

import streamspace.relay.proxy as proxy_module
from tests.support.polling import until
from tests.support.wsclient import connect

pytestmark = pytest.mark.slow

BANNER = b"RFB 003.008\n"
BURST = 500


async def first_bytes(client, n: int = len(BANNER), timeout: float = 60.0) -> bytes:
    got = b""
    while len(got) < n:
        d = client.messages.get()
        d.addTimeout(timeout, reactor)
        payload, _binary = await d
        got += payload
    return got


@pytest_twisted.ensureDeferred
async def test_viewers_beyond_a_limit_are_refused_with_4029(stack, fake_agent):
    # the settings reach the proxy (the fixture sets 600 and 700)...
    assert (stack.proxy.limits.per_session, stack.proxy.limits.per_user) == (600, 700)
    # ...and here smaller ones are easier to reach
    stack.proxy.limits.per_session, stack.proxy.limits.per_user = 2, 3
    a, server_a = await fake_agent.session_on(BANNER)
    b, _ = await fake_agent.session_on(BANNER)
    on_a = [await connect(await stack.vnc_url(a)) for _ in range(2)]
    for v in on_a:
        assert await first_bytes(v) == BANNER
    client = await connect(await stack.vnc_url(a))
    code, reason = await client.wait_closed(timeout=20)
    assert code == 4029 and "MAX_VIEWERS_PER_SESSION" in reason, (code, reason)
    on_b = await connect(await stack.vnc_url(b))
    assert await first_bytes(on_b) == BANNER  # the user's third viewer, on another session
    client = await connect(await stack.vnc_url(b))
    code, reason = await client.wait_closed(timeout=20)
    assert code == 4029 and "MAX_VIEWERS_PER_USER" in reason, (code, reason)
    assert len(server_a.connections) == 2  # the agent was never asked for a refused one
    on_a[0].close()
    await until(lambda: stack.proxy.limits.sessions[a] == 1, timeout=20,
                what="the closed viewer's place to be given back")
    again = await connect(await stack.vnc_url(a))
    assert await first_bytes(again) == BANNER
    for v in (on_a[1], on_b, again):
        v.close()
    await until(lambda: not stack.proxy.limits.sessions and not stack.proxy.limits.users,
                timeout=20, what="every place to be given back")


def _enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= needed, f"this test needs {needed} open files; the hard limit is {hard}"


@pytest_twisted.ensureDeferred
async def test_500_concurrent_viewers_connect_and_disconnect_on_one_session(
        stack, fake_agent, monkeypatch):
    """500 viewers at once on one session: each gets its own tunnel and bytes; then 500
    more connect and leave at once, half of them before their tunnel is linked. Afterwards
    nothing is left anywhere (proxy, limits, hub, agent, VNC server) and the session can
    still be viewed and stopped."""
    # 6 sockets per viewer in this one process (viewer, both control-plane legs, the
    # agent's WebSocket and TCP legs, the VNC server's side)
    _enough_descriptors(6 * BURST + 500)
    # the product's 15 s for the agent's leg is plenty; a loaded CI box opening 500 at once
    # in one process may not be, and this test is about correctness, not speed
    monkeypatch.setattr(proxy_module, "TUNNEL_ARRIVAL_TIMEOUT", 120.0)
    sid, server = await fake_agent.session_on(BANNER)
    admin_id = (await stack.request("GET", "/api/v1/auth/me"))[1]["id"]

    def url() -> str:
        token, _ = proxy_module.access.issue_token(
            stack.env["JWT_SECRET"], reactor.seconds(), admin_id, "admin", sid)
        return f"{stack.ws_base}/api/v1/vnc/{sid}?token={token}"

    # phase 1: 500 live at once, each with its own bytes both ways
    viewers = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(connect(url(), open_timeout=60)) for _ in range(BURST)])
    banners = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(first_bytes(v)) for v in viewers])
    assert all(b == BANNER for b in banners)
    assert len(stack.proxy.links) == BURST and len(server.connections) == BURST
    for i, v in enumerate(viewers):
        v.send_raw(f"<{i}>".encode(), binary=True)
    await until(lambda: sorted(bytes(c.received) for c in server.connections)
                == sorted(f"<{i}>".encode() for i in range(BURST)), timeout=60,
                what="each viewer's bytes on its own connection")
    for v in viewers:
        v.close()
    await _nothing_left(stack, fake_agent, server)

    # phase 2: 500 connect and leave at once, half before their tunnel is linked
    async def churn(i: int) -> None:
        v = await connect(url(), open_timeout=60)
        if i % 2:
            await first_bytes(v)
        v.close()
        await v.wait_closed(timeout=60)

    await defer.gatherResults([defer.Deferred.fromCoroutine(churn(i)) for i in range(BURST)])
    await _nothing_left(stack, fake_agent, server)

    # the session is still usable, and can be stopped
    last = await connect(url())
    assert await first_bytes(last) == BANNER
    last.close()
    code, _ = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
    assert code == 202
    await stack.wait_state(sid, "terminated", timeout=60)


async def _nothing_left(stack, fake_agent, server) -> None:
    proxy, hub = stack.proxy, stack.fleet.hub
    tunnels = fake_agent.service.tunnels.tunnels
    await until(lambda: not proxy.pairings and not proxy.pending and not proxy.links,
                timeout=120, what="the proxy to forget every tunnel")
    await until(lambda: not proxy.limits.sessions and not proxy.limits.users, timeout=10,
                what="every viewer's place to be given back")
    await until(lambda: not tunnels, timeout=120, what="the agent to close every tunnel")
    await until(lambda: all(c.closed for c in server.connections), timeout=120,
                what="every VNC connection to close")
    await until(lambda: not hub._ephemeral, timeout=120,
                what="every vnc_connect/vnc_disconnect to be answered")
