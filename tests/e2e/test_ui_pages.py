"""The UI in a real browser against a real control plane: login, catalog, account, the
admin pages and their filters, logout, narrow windows. (Sessions that reach `running` and
the viewer are in test_ui_sessions.py.)"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, login
from tests.support.processes import REPO, TWISTD

pytestmark = pytest.mark.slow

HOME = re.compile(r"^https?://[^/]+/$")
CATALOG = json.loads((REPO / "catalog" / "templates.json").read_text())["templates"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rows(page, table: str) -> list[str]:
    return page.locator(f"#{table} tbody tr").evaluate_all(
        "trs => trs.map(tr => tr.innerText)")


def attr_rows(page, table: str, attr: str) -> list[str]:
    return page.locator(f"#{table} tbody tr").evaluate_all(
        f"trs => trs.map(tr => tr.getAttribute('{attr}'))")


def redraw(page, action) -> None:
    """Run `action` and wait until the content area was rebuilt."""
    page.evaluate("window.__before = document.querySelector('#content').firstElementChild")
    action()
    page.wait_for_function(
        "() => document.querySelector('#content').firstElementChild !== window.__before")


def admin_page(page, path: str) -> None:
    login(page, "admin", ADMIN_PASSWORD)
    page.goto(path)
    page.wait_for_selector("#content[aria-busy=false]", state="attached")


def confirm(page) -> None:
    page.click("#confirm-ok")


# -- login, logout, account ----------------------------------------------------------------

def test_login_errors_then_home_lists_the_catalog(page, console, shot):
    console.allow(r"status of 401")
    page.goto("/")
    page.wait_for_url("**/login")
    page.click("#login-submit")
    assert page.text_content("#login-error") == "Enter your username and password."
    page.fill("#username", "admin")
    page.fill("#password", "not-the-password")
    page.click("#login-submit")
    page.wait_for_selector("#login-error:has-text('Wrong username or password.')")
    shot(page, "login-error")

    # keyboard only: the password field is selected after the error; Enter submits
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(HOME)
    page.wait_for_selector("#catalog[aria-busy=false]", state="attached")
    names = page.locator("#catalog .card h3").all_text_contents()
    assert sorted(names) == sorted(t["display_name"] for t in CATALOG)
    for t in CATALOG:
        card = page.locator(f"#catalog [data-template='{t['name']}']")
        assert t["description"] in card.inner_text()
        assert card.locator("button:has-text('Start')").is_enabled()
    assert page.locator("#no-sessions").is_visible()
    assert "active sessions in use" in page.text_content("#session-usage")
    shot(page, "home")


def test_rate_limited_login_shows_the_wait(page, console, shot):
    console.allow(r"status of 429")
    page.route("**/api/v1/auth/login", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "7", "Content-Type": "application/json"},
        body=json.dumps({"error": {"code": "too_many_attempts", "message":
                                   "too many failed login attempts; try again in 7 s"}})))
    page.goto("/login")
    page.fill("#username", "admin")
    page.fill("#password", "whatever")
    page.click("#login-submit")
    page.wait_for_selector("#login-error:has-text('Too many failed attempts')")
    assert re.search(r"Try again in [67] s", page.text_content("#login-error"))
    assert page.locator("#login-submit").is_disabled()
    shot(page, "rate-limited")


def test_login_returns_to_the_page_asked_for(page):
    page.goto("/admin/users")
    page.wait_for_url("**/login?next=%2Fadmin%2Fusers")
    assert page.locator("#login-info").is_visible()
    page.fill("#username", "admin")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#login-submit")
    page.wait_for_url("**/admin/users")
    page.wait_for_selector("#users-table")


def test_logout_forgets_the_token(page, server, shot):
    login(page, "admin", ADMIN_PASSWORD)
    token = page.evaluate("localStorage.getItem('streamspace.token')")
    assert token
    page.click("#logout")
    page.wait_for_url("**/login")
    assert page.evaluate("localStorage.getItem('streamspace.token')") is None
    # the server revoked it too
    code, _ = server.request("GET", "/api/v1/auth/me", token=token)
    assert code == 401
    page.goto("/")
    page.wait_for_url("**/login")
    shot(page, "after-logout")


def test_change_password(page, server, console, shot):
    console.allow(r"status of 403")
    name = unique("pw")
    server.create_user(name, "first-password-1")
    login(page, name, "first-password-1")
    page.goto("/account")
    page.wait_for_selector("#account-details dt")
    assert name in page.inner_text("#account-details")
    page.fill("#current-password", "wrong-password")
    page.fill("#new-password", "second-password-2")
    page.fill("#confirm-password", "second-password-X")
    page.click("#password-submit")
    assert page.text_content("#password-error") == "The two new passwords differ."
    page.fill("#confirm-password", "second-password-2")
    page.click("#password-submit")
    page.wait_for_selector("#password-error:has-text('current password is wrong')")
    page.fill("#current-password", "first-password-1")
    page.fill("#new-password", "second-password-2")
    page.fill("#confirm-password", "second-password-2")
    page.click("#password-submit")
    page.wait_for_selector("#password-ok:has-text('changed')")
    shot(page, "changed")
    # the page keeps working with the new token; the new password logs in
    page.goto("/")
    page.wait_for_selector("#catalog[aria-busy=false]", state="attached")
    assert server.login(name, "second-password-2")


def test_session_limit_is_explained(page, server, console):
    console.allow(r"status of 409")
    name = unique("limited")
    server.create_user(name, "limited-password-1", max_sessions=0)
    login(page, name, "limited-password-1")
    # the usage line is filled once the first session list arrives
    page.wait_for_selector("#session-usage:has-text('active sessions in use')")
    assert page.text_content("#session-usage") == "0 of 0 active sessions in use"
    page.click("#catalog [data-template='terminal'] button")
    error = page.wait_for_selector("#catalog-error:has-text('Session limit reached')")
    assert "the limit is 0" in error.text_content()
    assert page.locator("#sessions .card").count() == 0


def test_users_see_no_admin_pages(page, server):
    name = unique("plain")
    server.create_user(name, "plain-password-1")
    login(page, name, "plain-password-1")
    assert page.locator("header a[href='/admin/agents']").count() == 0
    page.goto("/admin/agents")
    page.wait_for_selector("#page-error:has-text('for administrators')")


# -- admin pages ---------------------------------------------------------------------------

def test_admin_users_create_edit_disable_and_filter(page, server, shot):
    admin_page(page, "/admin/users")
    assert "admin" in attr_rows(page, "users-table", "data-username")
    name = unique("made")
    page.click("#add-user")
    page.fill("#u-username", name)
    page.fill("#u-password", "made-password-1")
    page.fill("#u-display", "Made In Test")
    redraw(page, lambda: page.click("#u-submit"))
    page.wait_for_selector(f"#users-table tr[data-username='{name}']")
    shot(page, "created")

    # per-user limit and role through the edit dialog
    row = f"#users-table tr[data-username='{name}']"
    page.click(f"{row} button:has-text('Edit')")
    page.fill("#u-max", "2")
    redraw(page, lambda: page.click("#u-submit"))
    assert "\t2\t" in page.inner_text(row).replace("\n", "\t")

    # disable with confirmation
    page.click(f"{row} button:has-text('Disable')")
    redraw(page, lambda: confirm(page))
    assert "disabled" in page.inner_text(row)
    code, _ = server.request("POST", "/api/v1/auth/login",
                             {"username": name, "password": "made-password-1"})
    assert code == 403

    redraw(page, lambda: page.select_option("#role", "admin"))
    assert set(attr_rows(page, "users-table", "data-username")) == {"admin"}
    redraw(page, lambda: page.select_option("#role", "user"))
    users = attr_rows(page, "users-table", "data-username")
    assert name in users and "admin" not in users
    redraw(page, lambda: page.select_option("#disabled", "true"))
    assert name in attr_rows(page, "users-table", "data-username")
    assert all("disabled" in r for r in rows(page, "users-table"))
    assert "role=user" in page.url and "disabled=true" in page.url
    shot(page, "filtered")


def test_admin_templates_filter_edit_and_toggle(page, server, shot):
    try:
        admin_page(page, "/admin/templates")
        assert sorted(attr_rows(page, "templates-table", "data-template")) == sorted(
            t["name"] for t in CATALOG)
        shot(page, "list")
        redraw(page, lambda: page.select_option("#category", "Development"))
        assert attr_rows(page, "templates-table", "data-template") == ["terminal"]
        redraw(page, lambda: page.select_option("#category", ""))

        row = "#templates-table tr[data-template='chromium-browser']"
        redraw(page, lambda: page.click(f"{row} button:has-text('Disable')"))
        assert "disabled" in page.inner_text(row)
        redraw(page, lambda: page.select_option("#enabled", "false"))
        assert attr_rows(page, "templates-table", "data-template") == ["chromium-browser"]

        page.click(f"{row} button:has-text('Edit')")
        page.fill("#t-description", "Edited by the browser test.")
        redraw(page, lambda: page.click("#t-submit"))
        assert "Edited by the browser test." in page.inner_text(row)
        shot(page, "edited")

        # a disabled template is not in the catalog
        page.goto("/")
        page.wait_for_selector("#catalog[aria-busy=false]", state="attached")
        assert page.locator("#catalog [data-template='chromium-browser']").count() == 0
    finally:
        server.admin("PATCH", "/api/v1/templates/chromium-browser", {
            "enabled": True, "description": next(
                t["description"] for t in CATALOG if t["name"] == "chromium-browser")})


def test_admin_agents_list_filters_create_rotate_remove(page, server, shot):
    wait_agent_online(server, "local")
    admin_page(page, "/admin/agents")
    assert page.input_value("#refresh") == "10"
    assert "local" in attr_rows(page, "agents-table", "data-agent-id")

    agent_id = unique("edge")
    page.click("#add-agent")
    page.fill("#new-agent-id", agent_id)
    page.select_option("#new-agent-platform", "kubernetes")
    page.fill("#new-agent-region", "eu-west-1")
    page.fill("#new-agent-max", "4")
    page.click("#new-agent-submit")
    token = page.text_content("#agent-token")
    command = page.text_content("#agent-command")
    assert len(token) > 20
    assert token not in command  # asked for at a prompt, never in argv or the environment
    assert (f"AGENT_ID={agent_id} CONTROL_PLANE_URL={server.base} PLATFORM=kubernetes "
            f"REGION=eu-west-1 AGENT_TOKEN_FILE=") in command
    assert command.endswith(f"{TWISTD} --nodaemon --pidfile= agent"), command  # the venv's
    shot(page, "token-once")
    page.click("dialog button:has-text('Done')")
    row = f"#agents-table tr[data-agent-id='{agent_id}']"
    page.wait_for_selector(row)
    assert "0 / 4 sessions" in page.inner_text(row)
    assert int(page.text_content("#sum-total .value")) >= 2
    assert int(page.text_content("#sum-online .value")) >= 1
    assert int(page.text_content("#sum-platforms .value")) >= 2
    shot(page, "list")

    redraw(page, lambda: page.select_option("#filter-status", "offline"))
    shown = attr_rows(page, "agents-table", "data-agent-id")
    assert agent_id in shown and "local" not in shown
    redraw(page, lambda: page.select_option("#filter-status", ""))
    redraw(page, lambda: page.select_option("#filter-platform", "local"))
    assert "local" in attr_rows(page, "agents-table", "data-agent-id")
    assert agent_id not in attr_rows(page, "agents-table", "data-agent-id")
    redraw(page, lambda: page.select_option("#filter-platform", ""))
    redraw(page, lambda: page.select_option("#filter-region", "eu-west-1"))
    assert attr_rows(page, "agents-table", "data-agent-id") == [agent_id]
    shot(page, "filtered")

    # details with the full metadata
    page.click(f"{row} button:has-text('Details')")
    details = page.inner_text("#agent-details")
    assert agent_id in details and "eu-west-1" in details
    assert '"max_sessions": 4' in page.inner_text("dialog[open]")
    page.click("dialog[open] button:has-text('Close')")

    page.click(f"{row} button:has-text('Rotate token')")
    confirm(page)
    page.wait_for_selector("#agent-token")
    assert page.text_content("#agent-token") not in ("", token)
    page.click("dialog button:has-text('Done')")

    page.click(f"{row} button:has-text('Remove')")
    redraw(page, lambda: confirm(page))
    assert page.locator(row).count() == 0
    code, _ = server.admin("GET", f"/api/v1/agents/{agent_id}")
    assert code == 404


def test_the_add_agent_command_works_as_pasted(page, server, tmp_path):
    """Issue 9 item 5: the command the dialog shows, pasted into a shell (elsewhere than the
    checkout) and given the token at its prompt, starts an agent that comes online; the
    token is in a 0600 file, not in the agent's argv or environment; no pidfile appears
    in the checkout or the working directory."""
    import os
    import signal
    import subprocess

    from tests.support.processes import descendants, wait_gone

    agent_id = unique("pasted")
    admin_page(page, "/admin/agents")
    page.click("#add-agent")
    page.fill("#new-agent-id", agent_id)
    page.select_option("#new-agent-platform", "local")
    page.click("#new-agent-submit")
    token = page.text_content("#agent-token")
    command = page.text_content("#agent-command")
    page.click("dialog button:has-text('Done')")
    home, cwd = tmp_path / "home", tmp_path / "somewhere"
    home.mkdir()
    cwd.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    shell = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    agent_pids: set[int] = set()
    try:
        shell.stdin.write(token + "\n")
        shell.stdin.flush()
        wait_agent_online(server, agent_id)
        agent_pids = descendants(shell.pid) | {shell.pid}
        agent = next(p for p in agent_pids if b"agent" in _proc(p, "cmdline")
                     and b"twistd" in _proc(p, "cmdline"))
        assert token.encode() not in _proc(agent, "cmdline")
        assert token.encode() not in _proc(agent, "environ")
        token_file = home / ".streamspace-agents" / agent_id / "token"
        assert token_file.read_text().strip() == token
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert (home / ".streamspace-agents" / agent_id / "state").is_dir()
        assert not (REPO / "twistd.pid").exists() and not (cwd / "twistd.pid").exists()
        assert list(cwd.iterdir()) == []
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)
        out, _ = shell.communicate(timeout=30)
        assert wait_gone(agent_pids) == set()
    assert token not in out  # the prompt did not echo it
    assert not (REPO / "twistd.pid").exists()
    server.admin("DELETE", f"/api/v1/agents/{agent_id}")


def _proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_admin_audit_filters(page, server, shot):
    server.request("POST", "/api/v1/auth/login",
                   {"username": "admin", "password": "wrong-for-the-audit"})
    admin_page(page, "/admin/audit")
    assert len(rows(page, "audit-table")) > 1
    shot(page, "all")
    redraw(page, lambda: (page.fill("#action", "auth.login"), page.click("#apply-filters")))
    actions = attr_rows(page, "audit-table", "data-action")
    assert actions and set(actions) == {"auth.login"}
    redraw(page, lambda: page.select_option("#success", "false"))
    texts = rows(page, "audit-table")
    assert texts and all("failed" in t for t in texts)
    redraw(page, lambda: (page.fill("#action", "user.*"), page.select_option("#success", ""),
                          page.click("#apply-filters")))
    actions = attr_rows(page, "audit-table", "data-action")
    assert actions and all(a.startswith("user.") for a in actions)
    assert "action=user.*" in page.url.replace("%2A", "*")
    shot(page, "filtered")


def test_admin_sessions_filter_and_terminate(page, server, shot):
    name = unique("owner")
    server.create_user(name, "owner-password-1")
    token = server.login(name, "owner-password-1")
    code, session = server.request("POST", "/api/v1/sessions", {"template": "terminal"},
                                   token=token)
    assert code == 201, session
    try:
        admin_page(page, "/admin/sessions")
        assert session["id"] in attr_rows(page, "sessions-table", "data-session-id")
        redraw(page, lambda: (page.fill("#user", name), page.click("#apply-filters")))
        assert attr_rows(page, "sessions-table", "data-session-id") == [session["id"]]
        shot(page, "filtered")
        row = f"#sessions-table tr[data-session-id='{session['id']}']"
        page.click(f"{row} button:has-text('Terminate')")
        redraw(page, lambda: confirm(page))
        state = page.locator(f"{row} .badge").get_attribute("data-state") \
            if page.locator(row).count() else "terminated"
        assert state in ("terminating", "terminated")
    finally:
        server.request("DELETE", f"/api/v1/sessions/{session['id']}", token=token)


# -- layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/admin/agents", "/admin/audit"])
def test_narrow_window_has_no_sideways_scroll(page, path, shot):
    admin_page(page, path) if path != "/" else login(page, "admin", ADMIN_PASSWORD)
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_timeout(100)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"{path} is {overflow}px wider than a narrow window"
    shot(page, "narrow")


def wait_agent_online(server, agent_id: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = server.admin("GET", f"/api/v1/agents/{agent_id}")
        if code == 200 and body["status"] == "online":
            return
        time.sleep(0.2)
    pytest.fail(f"agent {agent_id} did not come online")


def test_event_stream_parser(page):
    """sse.js's parser, fed the awkward way a network delivers text/event-stream."""
    page.goto("/login")
    events = page.evaluate("""async () => {
        const { SSEParser } = await import('/js/sse.js');
        const out = [];
        const p = new SSEParser((e) => out.push(e));
        for (const chunk of ['\\ufeff: hello\\n\\nid: 1\\nevent: sta', 'te\\ndata: {"state":',
                             '"pending"}\\r', '\\n\\r\\ndata: a\\ndata: b\\n\\n',
                             'data:no-space\\r\\rretry: 5\\n', 'event: x\\n\\n',
                             'data: unfinished']) {
            p.feed(chunk);
        }
        p.end();
        return {out, retry: p.retry};
    }""")
    assert events["out"] == [
        {"type": "state", "data": '{"state":"pending"}', "id": "1"},
        {"type": "message", "data": "a\nb", "id": "1"},
        {"type": "message", "data": "no-space", "id": "1"},
    ]
    assert events["retry"] == 5
