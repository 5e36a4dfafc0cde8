"""Sessions in a real browser on the real stack: the dev-mode local agent runs real Xvnc
sessions, the VNC proxy carries noVNC's bytes. From the catalog to a desktop that shows a
real frame and takes keystrokes; live progress over the events stream; the viewer's
reconnect shortcut; hibernate and wake with automatic reconnection; isolation between
users; the admin agents page counting what runs; delete with confirmation.

When something they need is missing (the vnc-token or events endpoints, Xvnc, a local
agent that comes online) they fail with the reason: a missing prerequisite is never a pass.
"""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, login

pytestmark = pytest.mark.slow

PASSWORD = "alice-password-1"
STATE: dict[str, str] = {}  # the user and the session the tests of this module share


@pytest.fixture(scope="module")
def alice(server):
    missing = [what for method, path, what in (
        ("POST", f"/api/v1/sessions/{uuid.uuid4()}/vnc-token",
         "POST /api/v1/sessions/{id}/vnc-token"),
        ("GET", f"/api/v1/sessions/{uuid.uuid4()}/events", "GET /api/v1/sessions/{id}/events"),
    ) if not server.has_route(method, path)]
    if missing:
        pytest.fail(f"the control plane lacks {', '.join(missing)}")
    if shutil.which("Xvnc") is None:
        pytest.fail("Xvnc (TigerVNC) is not installed: the local platform cannot run sessions "
                    "(scripts/setup.sh installs it)")
    if not agent_online(server, "local", timeout=30):
        pytest.fail("the dev-mode local agent did not come online within 30 s (see the "
                    "server's log)")
    name = f"alice-{uuid.uuid4().hex[:6]}"
    server.create_user(name, PASSWORD)
    STATE["user"] = name
    return name


def agent_online(server, agent_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = server.admin("GET", f"/api/v1/agents/{agent_id}")
        if code == 200 and body["status"] == "online":
            return True
        time.sleep(0.2)
    return False


def running_session(server, user: str) -> str:
    """Alice's running session: the one the first test started, or a new one."""
    token = server.login(user, PASSWORD)
    sid = STATE.get("session")
    if sid is None:
        code, body = server.request("POST", "/api/v1/sessions", {"template": "terminal"},
                                    token=token)
        assert code == 201, body
        sid = STATE["session"] = body["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code, body = server.request("GET", f"/api/v1/sessions/{sid}", token=token)
        assert code == 200, body
        if body["state"] == "running":
            return sid
        if body["state"] == "hibernated":
            server.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "running"}, token=token)
        assert body["state"] not in ("failed", "terminated"), body
        time.sleep(0.25)
    pytest.fail(f"session {sid} did not get to running")


def canvas_stats(viewer) -> dict:
    """Distinct pixel values of the noVNC canvas, and a digest of its content."""
    return viewer.evaluate("""() => {
        const c = document.querySelector('#vnc canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        let hash = 0;
        for (let i = 0; i < d.length; i += 4) {
            const v = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
            seen.add(v);
            hash = (hash * 31 + v) | 0;
        }
        return {width: c.width, height: c.height, distinct: seen.size, hash};
    }""")


def wait_connected(viewer, timeout: float = 30000) -> None:
    viewer.wait_for_function(
        "() => window.streamspaceViewer && window.streamspaceViewer.rfb"
        " && document.querySelector('#overlay').classList.contains('hidden')", timeout=timeout)


def open_viewer(context, page, sid: str):
    with context.expect_page() as popup:
        page.click(f"#sessions [data-session-id='{sid}'] [data-action=connect]")
    viewer = popup.value
    wait_connected(viewer)
    return viewer


def test_catalog_session_reaches_running_and_the_viewer_shows_the_desktop(
        context, page, server, alice, shot, tmp_path):
    streams = []
    page.on("response", lambda r: "/events" in r.url and streams.append(
        r.headers.get("content-type", "")))
    login(page, alice, PASSWORD)
    page.evaluate("""() => {
        window.__states = [];
        new MutationObserver(() => {
            const card = document.querySelector('#sessions .card');
            const s = card && card.dataset.state;
            if (s && window.__states.at(-1) !== s) window.__states.push(s);
        }).observe(document.querySelector('#sessions'),
                   {subtree: true, childList: true, attributes: true});
    }""")
    page.click("#catalog [data-template='terminal'] button")
    card = page.wait_for_selector("#sessions .card[data-state=running]", timeout=60000)
    sid = STATE["session"] = card.get_attribute("data-session-id")
    states = page.evaluate("window.__states")
    assert states[-1] == "running" and set(states[:-1]) & {"pending", "scheduled", "starting"}, \
        states
    assert any(t.startswith("text/event-stream") for t in streams), streams
    text = card.inner_text()
    assert "local" in text  # platform, agent and region of the dev-mode agent
    shot(page, "home-running")

    viewer = open_viewer(context, page, sid)
    sockets = []
    viewer.on("websocket", lambda ws: sockets.append(ws.url))
    assert viewer.title().endswith(" - StreamSpace") and viewer.title() != "Session - StreamSpace"
    time.sleep(0.5)  # the first full frame
    before = canvas_stats(viewer)
    assert before["width"] >= 640 and before["height"] >= 400, before
    assert before["distinct"] >= 2, before

    # keys reach the session: the terminal runs what is typed
    # (the session's /tmp is private: on the host it is its sandbox's tmp/)
    name = f"streamspace-e2e-{uuid.uuid4().hex}"
    marker = server.state_dir / "agent" / "sessions" / sid / "sandbox" / "tmp" / name
    viewer.click("#vnc canvas")
    viewer.keyboard.type(f"echo typed-in-the-browser && touch /tmp/{name}")
    viewer.keyboard.press("Enter")
    deadline = time.monotonic() + 15
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the typed command did not run in the session"
    marker.unlink()
    time.sleep(0.3)
    after = canvas_stats(viewer)
    assert after["hash"] != before["hash"], "the typed text never showed in the frame"
    assert after["distinct"] >= 8, after  # antialiased text on a real frame
    shot(viewer, "desktop", full_page=False)

    # Ctrl+Alt+Shift+R: a new connection with a fresh VNC token, no page reload
    viewer.evaluate("window.__old = window.streamspaceViewer.rfb; window.__page = 1")
    viewer.keyboard.press("Control+Alt+Shift+KeyR")
    viewer.wait_for_function("() => window.streamspaceViewer.rfb !== window.__old"
                             " && document.querySelector('#overlay').classList"
                             ".contains('hidden')")
    assert viewer.evaluate("window.__page") == 1
    login_token = viewer.evaluate("localStorage.getItem('streamspace.token')")
    assert sockets and all("token=" in u and login_token not in u for u in sockets), sockets

    # Ctrl+Alt+Shift+F toggles fullscreen (and the key never reaches the session)
    viewer.keyboard.press("Control+Alt+Shift+KeyF")
    viewer.wait_for_function("() => document.fullscreenElement !== null")
    viewer.keyboard.press("Control+Alt+Shift+KeyF")
    viewer.wait_for_function("() => document.fullscreenElement === null")

    # clipboard from the session: selecting the echoed line in xterm sets the X selection,
    # which Xvnc sends to noVNC, which hands it to the viewer's clipboard panel
    box = viewer.locator("#vnc canvas").bounding_box()
    scale = box["height"] / after["height"]
    viewer.mouse.click(box["x"] + 40 * scale, box["y"] + 26 * scale, click_count=3)
    viewer.wait_for_function(
        "() => document.querySelector('#clipboard-text').value.includes('typed-in-the-browser')")

    # clipboard to the session: sent text becomes the X selection; a middle click pastes it
    # into the shell, which then runs it
    clip = f"streamspace-clip-{uuid.uuid4().hex}"
    pasted = marker.parent / clip  # the session's /tmp, as the host sees it
    viewer.click("#btn-clipboard")
    viewer.fill("#clipboard-text", f"/tmp/{clip}")
    viewer.click("#clipboard-send")
    viewer.wait_for_selector("#toasts :text(\"Sent to the session's clipboard.\")")
    viewer.evaluate("window.streamspaceViewer.rfb.focus()")
    viewer.keyboard.type("touch ")
    viewer.mouse.click(box["x"] + 300 * scale, box["y"] + 300 * scale, button="middle")
    viewer.keyboard.press("Enter")
    deadline = time.monotonic() + 15
    while not pasted.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pasted.exists(), "the text sent to the clipboard did not reach the session"
    pasted.unlink()


def test_progress_falls_back_to_polling_when_the_stream_fails(page, server, alice, console):
    console.allow(r"ERR_FAILED")
    page.route("**/api/v1/sessions/*/events", lambda route: route.abort())
    polls = []
    page.on("request", lambda r: r.method == "GET" and "/api/v1/sessions/" in r.url
            and "/events" not in r.url and polls.append(r.url))
    login(page, alice, PASSWORD)
    page.wait_for_selector("#sessions[aria-busy=false]", state="attached")
    known = set(page.locator("#sessions .card").evaluate_all(
        "cards => cards.map(c => c.dataset.sessionId)"))
    page.click("#catalog [data-template='terminal'] button")
    sid = page.wait_for_function(
        "known => [...document.querySelectorAll('#sessions .card')]"
        ".map(c => c.dataset.sessionId).find(id => !known.includes(id))",
        arg=sorted(known)).json_value()
    try:
        page.wait_for_selector(f"#sessions [data-session-id='{sid}'][data-state=running]",
                               timeout=60000)
        assert any(u.endswith(f"/sessions/{sid}") for u in polls), polls
    finally:
        server.request("DELETE", f"/api/v1/sessions/{sid}", token=server.login(alice, PASSWORD))


def test_agents_page_counts_the_running_session(page, server, alice, shot):
    running_session(server, alice)
    code, agent = server.admin("GET", "/api/v1/agents/local")
    assert code == 200 and agent["active_sessions"] >= 1
    login(page, "admin", ADMIN_PASSWORD)
    page.goto("/admin/agents")
    row = page.wait_for_selector("#agents-table tr[data-agent-id=local]")
    assert "online" in row.inner_text()
    assert f"{agent['active_sessions']} / " in row.inner_text()
    assert int(page.text_content("#sum-sessions .value")) >= agent["active_sessions"]
    page.select_option("#filter-status", "online")
    page.wait_for_selector("#agents-table tr[data-agent-id=local]")
    shot(page, "agents")


def test_another_user_cannot_see_or_open_the_session(page, server, alice, console, shot):
    console.allow(r"status of 404")
    sid = running_session(server, alice)
    bob = f"bob-{uuid.uuid4().hex[:6]}"
    server.create_user(bob, "bob-password-1")
    login(page, bob, "bob-password-1")
    page.wait_for_selector("#sessions[aria-busy=false]", state="attached")
    assert page.locator("#sessions .card").count() == 0
    page.goto(f"/vnc-viewer/{sid}")
    page.wait_for_selector("#overlay-message:has-text('does not exist, or it is not yours')")
    assert page.evaluate("window.streamspaceViewer.rfb") is None
    shot(page, "refused")


def test_hibernate_then_wake_from_the_viewer_reconnects(context, page, server, alice, shot):
    sid = running_session(server, alice)
    login(page, alice, PASSWORD)
    page.wait_for_selector(f"#sessions [data-session-id='{sid}'][data-state=running]")
    viewer = open_viewer(context, page, sid)

    page.click(f"#sessions [data-session-id='{sid}'] [data-action=hibernate]")
    page.wait_for_selector(f"#sessions [data-session-id='{sid}'][data-state=hibernated]",
                           timeout=60000)
    viewer.wait_for_selector("#overlay-message:has-text('hibernated')", timeout=30000)
    shot(viewer, "hibernated", full_page=False)
    viewer.click("#overlay-actions button:has-text('Wake session')")
    wait_connected(viewer, timeout=60000)
    assert canvas_stats(viewer)["width"] >= 640
    shot(viewer, "woken", full_page=False)


def test_delete_asks_first_then_removes_the_session(page, server, alice, shot):
    sid = running_session(server, alice)
    login(page, alice, PASSWORD)
    card = f"#sessions [data-session-id='{sid}']"
    page.wait_for_selector(card)
    page.click(f"{card} [data-action=delete]")
    page.click("#confirm-cancel")
    assert page.locator(card).count() == 1
    page.click(f"{card} [data-action=delete]")
    shot(page, "confirm")
    page.click("#confirm-ok")
    page.wait_for_selector(card, state="detached", timeout=60000)
    STATE.pop("session", None)
    token = server.login(alice, PASSWORD)
    code, body = server.request("GET", f"/api/v1/sessions/{sid}", token=token)
    assert code == 200 and body["state"] in ("terminating", "terminated"), body


def test_an_application_that_exits_reads_stopped_and_restarts(page, server, alice, shot):
    """Issue 10 item 12 in the browser: the application ends by itself (`exit` in a
    terminal): the card reads `stopped` with the reason, not a red `failed`; Restart
    starts it again (same template, same home) and the card follows it to running."""
    code, body = server.admin("POST", "/api/v1/templates", {
        "name": f"blip-{uuid.uuid4().hex[:6]}", "display_name": "Blip",
        "platforms": {"local": {"command": "sleep 3"}}})
    assert code == 201, body
    user = f"rita-{uuid.uuid4().hex[:6]}"
    server.create_user(user, PASSWORD)
    code, session = server.request("POST", "/api/v1/sessions", {"template": body["name"]},
                                   token=server.login(user, PASSWORD))
    assert code == 201, session
    login(page, user, PASSWORD)
    card = f"#sessions [data-session-id='{session['id']}']"
    page.wait_for_selector(f"{card}[data-state=stopped]", timeout=60000)
    assert page.locator(f"{card} .badge.failed").count() == 0
    assert page.locator(f"{card} [role=alert]").count() == 0  # not an error
    assert "application exited" in page.locator(f"{card} .status-line").inner_text().lower()
    shot(page, "stopped")
    page.evaluate("""(sel) => {
        window.__states = [];
        new MutationObserver(() => {
            const s = document.querySelector(sel)?.dataset.state;
            if (s && window.__states.at(-1) !== s) window.__states.push(s);
        }).observe(document.querySelector('#sessions'),
                   {subtree: true, attributes: true, childList: true});
    }""", card)
    page.click(f"{card} [data-action=restart]")
    page.wait_for_function("() => window.__states.includes('running')", timeout=60000)
    page.wait_for_selector(f"{card}[data-state=stopped]", timeout=60000)
    shot(page, "restarted")
