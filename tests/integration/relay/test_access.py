"""Who may watch, end to end (real control plane and PostgreSQL, the real agent code, real
WebSockets): VNC tokens work once, also across a restart; changing an account or deleting
the session ends its live tunnels and its unused tokens; changes the proxy is not told about
(made through another replica) end them at the next database re-check; the audit log names
the viewer."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

import streamspace.relay.proxy as proxy_module
from tests.support.http import poll
from tests.support.polling import until
from tests.support.wsclient import connect

pytestmark = pytest.mark.slow

BANNER = b"RFB 003.008\n"


async def banner_of(client) -> bytes:
    d = client.messages.get()
    d.addTimeout(20, reactor)
    payload, binary = await d
    assert binary
    return payload


async def refused(url: str) -> tuple[int, str]:
    client = await connect(url)
    return await client.wait_closed(timeout=20)


async def vnc_rows(stack, session_id: str) -> list[tuple]:
    return await stack.service.getServiceNamed("database").db.query(
        "SELECT action, actor_id::text, actor_name, details FROM audit_log "
        "WHERE target_id = %s AND action LIKE 'vnc.%%' ORDER BY id", (session_id,))


@pytest_twisted.ensureDeferred
async def test_a_vnc_token_works_once_even_across_a_restart(stack, fake_agent):
    sid, _server = await fake_agent.session_on(BANNER)
    url = await stack.vnc_url(sid)
    first = await connect(url)
    assert await banner_of(first) == BANNER
    code, reason = await refused(url)  # the same token while the first viewer watches
    assert code == 4001 and "already used" in reason, (code, reason)
    first.close()
    await until(lambda: not stack.proxy.pairings, timeout=20, what="the first tunnel to end")
    await stack.restart()  # a new control-plane process knows nothing in memory
    await stack.wait_agent("relay-agent", "online", timeout=20)
    await stack.wait_state(sid, "running")
    code, reason = await refused(url)
    assert code == 4001 and "already used" in reason, (code, reason)
    fresh = await connect(await stack.vnc_url(sid))  # a new token still works
    assert await banner_of(fresh) == BANNER
    fresh.close()


async def _watching(stack, fake_agent, username: str):
    """A user with a running session, a live viewer on it and an unused VNC token."""
    login = await stack.create_user(username, password="user-password-1234")
    code, me = await stack.request("GET", "/api/v1/auth/me", token=login)
    sid, server = await fake_agent.session_on(BANNER, token=login)
    viewer = await connect(await stack.vnc_url(sid, token=login))
    assert await banner_of(viewer) == BANNER
    unused = await stack.vnc_url(sid, token=login)
    return me["id"], sid, server, viewer, unused


@pytest_twisted.ensureDeferred
async def test_account_changes_and_deletion_end_live_viewers_and_unused_tokens(
        stack, fake_agent, monkeypatch):
    """Only the API's call can end these tunnels here: the database re-check is put off."""
    monkeypatch.setattr(proxy_module, "REVALIDATE_INTERVAL", 3600.0)
    changes = {
        "disabled": ("PATCH", {"disabled": True}, 4001, "access ended"),
        "password reset": ("PATCH", {"password": "a-new-password-5678"}, 4001, "access ended"),
        "role change": ("PATCH", {"role": "admin"}, 4001, "access ended"),
        "session deleted": ("DELETE", None, 4009, "deleted"),
    }
    for i, (name, (method, body, code, words)) in enumerate(changes.items()):
        user_id, sid, server, viewer, unused = await _watching(stack, fake_agent, f"viewer{i}")
        if method == "PATCH":
            status, answer = await stack.request("PATCH", f"/api/v1/users/{user_id}", body)
            assert status == 200, (name, answer)
        else:
            status, answer = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
            assert status in (202, 204), (name, answer)
        closed_code, reason = await viewer.wait_closed(timeout=20)
        assert closed_code == code and words in reason, (name, closed_code, reason)
        await until(lambda s=server: s.connections[0].closed, timeout=20,
                    what=f"{name}: the tunnel's TCP side to close")
        bad_code, bad_reason = await refused(unused)
        assert bad_code in (4001, 4009), (name, bad_code, bad_reason)
        assert "already used" not in bad_reason, name
    await until(lambda: not stack.proxy.pairings, timeout=20, what="every tunnel to be gone")
    # the audit log names the viewer, not `system`
    rows = await poll(lambda: _both_rows(stack, sid), what="the vnc audit rows")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("vnc.connect", user_id, "viewer3"), ("vnc.disconnect", user_id, "viewer3")]
    assert "deleted" in rows[1][3]["reason"]


async def _both_rows(stack, sid):
    rows = await vnc_rows(stack, sid)
    return rows if len(rows) == 2 else None


@pytest_twisted.ensureDeferred
async def test_a_change_made_elsewhere_ends_the_tunnel_at_the_next_recheck(stack, fake_agent):
    """As if another replica had disabled the account: the database changes, nobody tells
    this process, and its periodic re-check ends the tunnel."""
    user_id, sid, server, viewer, _ = await _watching(stack, fake_agent, "elsewhere")
    await stack.service.getServiceNamed("database").db.execute(
        "UPDATE users SET disabled = true WHERE id = %s", (user_id,))
    code, reason = await viewer.wait_closed(timeout=30)
    assert code == 4001 and "disabled" in reason, (code, reason)
    await until(lambda: server.connections[0].closed, timeout=20, what="the TCP side to close")
