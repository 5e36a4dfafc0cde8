"""`twistd streamspace` as an operator runs it: a real process, real signals, real exit codes."""

import stat
import tempfile
from pathlib import Path

import pytest

from tests.support.http import wait_http
from tests.support.processes import (
    database_url,
    descendants,
    free_port,
    stop,
    twistd,
    wait_gone,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def state_dir():
    d = Path(tempfile.mkdtemp(prefix="streamspace-test-state-"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def test_embedded_start_serves_and_sigterm_leaves_no_child(state_dir):
    port = free_port()
    proc = twistd("streamspace", ["--port", str(port), "--interface", "127.0.0.1"],
                  {"STREAMSPACE_STATE_DIR": str(state_dir)})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        wait_http(f"http://127.0.0.1:{port}/ready", timeout=60)
        children = descendants(proc.pid)
        assert children, "the embedded PostgreSQL should run as a child process"
        creds = state_dir / "admin-credentials"
        assert creds.exists()
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert "username: admin" in creds.read_text()
    finally:
        out = stop(proc)
    # twistd re-raises the signal it was stopped by, as a well-behaved Unix process does
    assert proc.returncode in (0, -15), out
    assert "Server Shut Down" in out
    assert wait_gone(children) == set(), f"left behind: {children}\n{out}"
    assert "Traceback" not in out
    # the generated password is shown once on the terminal, and never in a log line
    password = creds.read_text().split("password: ")[1].strip()
    log_lines = [line for line in out.splitlines() if "[" in line and "#" in line]
    assert not any(password in line for line in log_lines)


def test_invalid_configuration_is_one_message_and_non_zero_exit(state_dir):
    proc = twistd("streamspace", [], {"STREAMSPACE_STATE_DIR": str(state_dir), "PORT": "web",
                                      "LOG_LEVEL": "chatty", "COMMAND_TIMEOUT": "soon"})
    out = _wait_exit(proc)
    assert proc.returncode != 0
    assert "invalid configuration (3 problem(s))" in out
    for name in ("PORT", "LOG_LEVEL", "COMMAND_TIMEOUT"):
        assert name in out
    assert "Traceback" not in out


def test_external_database_with_pending_migrations_is_refused_unless_migrate(
        empty_dsn, state_dir):
    env = {"STREAMSPACE_STATE_DIR": str(state_dir), "DATABASE_URL": database_url(empty_dsn),
           "JWT_SECRET": "s" * 40}
    port = free_port()
    proc = twistd("streamspace", ["--port", str(port), "--interface", "127.0.0.1"], env)
    out = _wait_exit(proc)
    assert proc.returncode != 0, out
    assert "pending migrations 0001" in out and "--migrate" in out
    assert "Traceback" not in out

    proc = twistd("streamspace", ["--port", str(port), "--interface", "127.0.0.1", "--migrate"],
                  env)
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", timeout=60)
    finally:
        out = stop(proc)
    assert proc.returncode in (0, -15), out


def test_migrate_only_applies_and_exits(empty_dsn, state_dir):
    env = {"STREAMSPACE_STATE_DIR": str(state_dir), "DATABASE_URL": database_url(empty_dsn),
           "JWT_SECRET": "s" * 40}
    proc = twistd("streamspace", ["--migrate-only"], env)
    out = _wait_exit(proc)
    assert proc.returncode == 0, out
    assert "applied migrations 0001" in out


def _wait_exit(proc, timeout=60):
    out, _ = proc.communicate(timeout=timeout)
    return out



def test_make_run_mode_with_local_agent_and_a_session_stops_everything(state_dir):
    """`make run`'s configuration: embedded database, local agent, a running session.
    A session asked for as soon as /ready answers (the local agent may not be online yet)
    waits for it and runs; the URL is printed once the agent is online. Ctrl-C (SIGINT)
    must leave no postgres, agent, Xvnc or application process behind."""
    import json
    import signal
    import urllib.request

    port = free_port()
    proc = twistd("streamspace", ["--port", str(port), "--interface", "127.0.0.1"],
                  {"STREAMSPACE_STATE_DIR": str(state_dir), "STREAMSPACE_LOCAL_AGENT": "1",
                   "ADMIN_PASSWORD": "admin-password-1"})
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None, token=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    try:
        wait_http(base + "/ready", timeout=60)
        token = call("POST", "/api/v1/auth/login",
                     {"username": "admin", "password": "admin-password-1"})["token"]
        session = call("POST", "/api/v1/sessions", {"template": "terminal"}, token)
        _poll(lambda: _agent_online(call, token), "the local agent to come online")
        _poll(lambda: call("GET", f"/api/v1/sessions/{session['id']}", token=token)["state"]
              == "running", "the session to run on the local agent")
        children = descendants(proc.pid)
        cmdlines = " ".join(_cmdline(p) for p in children)
        assert "agent" in cmdlines and "Xvnc" in cmdlines and "postgres" in cmdlines
    finally:
        out = stop(proc, sig=signal.SIGINT)
    assert proc.returncode in (0, -2, -15), out
    assert wait_gone(children) == set(), f"left behind: {children}\n{out[-3000:]}"
    ready = out.index(f"StreamSpace is ready (local agent online): open http://localhost:{port}")
    assert out.index("agent local registered") < ready, out[-3000:]


def _agent_online(call, token):
    try:
        return call("GET", "/api/v1/agents/local", token=token)["status"] == "online"
    except Exception:  # not provisioned yet
        return False


def _poll(check, what, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)  # a blocking test polling a subprocess, not reactor code
    raise AssertionError(f"timed out waiting for {what}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
