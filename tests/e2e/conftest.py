"""Browser tests: a real `twistd streamspace` (embedded PostgreSQL, the dev-mode local agent
with real Xvnc) driven through Debian's chromium by playwright.

The control plane runs as a subprocess, not in this process: playwright's sync API blocks
the thread, which would stall an in-process reactor. One server serves the whole module
set (start-up is the slow part); each test gets a fresh browser context (no shared login).
Every page must log no console error (tests may allow specific ones) and each test saves
screenshots under test-artifacts/e2e/.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.http import wait_http
from tests.support.processes import REPO, free_port, stop, twistd

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
ADMIN_PASSWORD = "admin-password-e2e"
VIEWPORT = {"width": 1280, "height": 800}


class Server:
    """The running control plane, and a small synchronous client of its API."""

    def __init__(self, base: str, state_dir: Path, proc) -> None:
        self.base = base
        self.state_dir = state_dir
        self.proc = proc
        self._admin_token: str | None = None

    def request(self, method: str, path: str, body=None, token: str | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw, code, headers = r.read(), r.status, r.headers
        except urllib.error.HTTPError as e:
            raw, code, headers = e.read(), e.code, e.headers
        is_json = "json" in (headers.get("Content-Type") or "")
        return code, (json.loads(raw) if raw and is_json else raw)

    def login(self, username: str, password: str) -> str:
        code, body = self.request("POST", "/api/v1/auth/login",
                                  {"username": username, "password": password})
        assert code == 200, body
        return body["token"]

    @property
    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.login("admin", ADMIN_PASSWORD)
        return self._admin_token

    def admin(self, method: str, path: str, body=None):
        return self.request(method, path, body, token=self.admin_token)

    def create_user(self, username: str, password: str = "user-password-1", **fields) -> dict:
        code, body = self.admin("POST", "/api/v1/users",
                                {"username": username, "password": password, **fields})
        assert code == 201, body
        return body

    def has_route(self, method: str, path: str) -> bool:
        """Whether the API knows `path` (an unknown route says "no such API endpoint")."""
        code, body = self.admin(method, path)
        if code != 404:
            return True
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
        return "endpoint" not in message


@pytest.fixture(scope="session")
def server():
    state_dir = Path(tempfile.mkdtemp(prefix="streamspace-e2e-ui-"))
    state_dir.chmod(0o755)
    port = free_port()
    proc = twistd("streamspace", ["--port", str(port), "--interface", "127.0.0.1"], {
        "STREAMSPACE_STATE_DIR": str(state_dir), "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "STREAMSPACE_LOCAL_AGENT": "1", "HEARTBEAT_INTERVAL": "2s",
        "MAX_SESSIONS_PER_USER": "3",
    })
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/ready", timeout=90)
    except Exception:
        out = stop(proc)
        shutil.rmtree(state_dir, ignore_errors=True)
        raise AssertionError(f"the control plane did not become ready:\n{out[-5000:]}") from None
    yield Server(base, state_dir, proc)
    out = stop(proc, timeout=60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "control-plane.log").write_text(out)
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup.sh installs Debian chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class ConsoleWatch:
    """Console errors and uncaught exceptions of every page in a context."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern] = []

    def attach(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{page.url}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught {e}"))

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def console():
    return ConsoleWatch()


@pytest.fixture
def context(browser, console, server):
    ctx = browser.new_context(viewport=VIEWPORT, base_url=server.base)
    ctx.set_default_timeout(15000)
    ctx.on("page", console.attach)  # every page of the context, popups included
    yield ctx
    ctx.close()
    bad = console.unexpected()
    assert not bad, "console errors:\n" + "\n".join(bad)


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def shot(request):
    """shot(page, "name"): save a screenshot as test-artifacts/e2e/<test>-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)

    def take(page, name: str, full_page: bool = True) -> Path:
        path = ARTIFACTS / f"{test}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take


def login(page, username: str, password: str) -> None:
    """Log in through the login page and wait for the home page."""
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r"^https?://[^/]+/$"))
    page.wait_for_selector("#catalog[aria-busy=false]", state="attached")
