"""`twistd streamspace` as an operator runs it: a real process, real signals, real exit codes."""

import re
import stat
import tempfile
from pathlib import Path

import pytest

from tests.support.http import wait_http
from tests.support.processes import (
    alive,
    database_url,
    descendants,
    free_port,
    listening_addresses,
    make_run,
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
    """Started as `make run` starts it (scripts/run.sh, here without the local agent)."""
    port = free_port()
    proc = make_run(["--port", str(port), "--interface", "127.0.0.1"],
                    {"STREAMSPACE_STATE_DIR": str(state_dir), "STREAMSPACE_LOCAL_AGENT": "0"})
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
    # nit 3: the script adds nothing of its own; what it used to guess, the log says
    assert re.match(r"\d{4}-\d\d-\d\dT", out), out[:500]
    assert f"listening on http://127.0.0.1:{port}" in out
    assert f"state directory {state_dir}" in out
    assert f"admin credentials written to {creds}" in out


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



def test_make_run_mode_ctrl_c_stops_agent_then_database_quietly(state_dir):
    """`make run`'s configuration: embedded database, local agent, a running session.
    A session asked for as soon as /ready answers (the local agent may not be online yet)
    waits for it and runs; the URL is printed once the agent is online (issue 10 item 13).
    Ctrl-C at a terminal sends SIGINT to the whole foreground process group; only the
    control plane must get it (issue 9 item 6): it stops the agent (SIGTERM), then the
    database, prints no traceback, and leaves no postgres, agent, Xvnc or app behind."""
    import os
    import signal

    port = free_port()
    # its own session and process group, as a shell gives a foreground job
    log_path = state_dir / "console.log"
    with open(log_path, "w") as console:
        proc = twistd("streamspace", ["--port", str(port)],
                      {"STREAMSPACE_STATE_DIR": str(state_dir), "STREAMSPACE_LOCAL_AGENT": "1",
                       "ADMIN_PASSWORD": "admin-password-1"}, start_new_session=True,
                      stdout=console)
    call = _caller(f"http://127.0.0.1:{port}")
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", timeout=60)
        token = call("POST", "/api/v1/auth/login",
                     {"username": "admin", "password": "admin-password-1"})["token"]
        session = call("POST", "/api/v1/sessions", {"template": "terminal"}, token)
        _poll(lambda: _agent_online(call, token), "the local agent to come online")
        _poll(lambda: call("GET", f"/api/v1/sessions/{session['id']}", token=token)["state"]
              == "running", "the session to run on the local agent")
        children = descendants(proc.pid)
        cmdlines = " ".join(_cmdline(p) for p in children)
        assert "agent" in cmdlines and "Xvnc" in cmdlines and "postgres" in cmdlines
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C...
        _poll(lambda: "Received SIGINT" in _read(log_path), "the control plane to stop",
              interval=0.01)
        try:
            os.killpg(proc.pid, signal.SIGINT)  # ...and again, as impatient people do
        except ProcessLookupError:
            pass  # it was quicker
        proc.wait(timeout=60)
    finally:
        out = stop(proc, sig=signal.SIGINT)
        out = _read(log_path)
    assert proc.returncode in (0, -2), out
    assert wait_gone(children) == set(), f"left behind: {children}\n{out[-3000:]}"
    assert "Traceback" not in out and "Unhandled" not in out, out[-5000:]
    ready = out.index(f"StreamSpace is ready (local agent online): open http://127.0.0.1:{port}")
    assert out.index("agent local registered") < ready, out[-3000:]
    shutdown = out[out.index("Received SIGINT"):]
    agent_lines = [line for line in shutdown.splitlines() if "[agent]" in line]
    assert any("Received SIGTERM" in line for line in agent_lines), shutdown
    assert not any("SIGINT" in line for line in agent_lines), shutdown
    assert shutdown.index("local agent stopped") < shutdown.index("embedded PostgreSQL stopped")
    loud = [line for line in shutdown.splitlines()
            if "#error]" in line or "#critical]" in line or "#warn]" in line]
    assert loud == [], loud


def test_sigkill_leaves_no_orphan_and_the_next_start_cleans_up_leftovers(state_dir):
    """Issue 9 item 15: SIGKILL of `twistd streamspace --local-agent` takes its agent and
    embedded PostgreSQL with it; and a restart finds what a previous run left anyway (an
    agent of its state directory, a live postmaster of its cluster), stops it and starts
    cleanly."""
    import os
    import signal
    import subprocess

    from twisted.internet import reactor

    from streamspace.db.embedded import EmbeddedPostgres, find_bindir
    from tests.support.processes import REPO, TWISTD

    env = {"STREAMSPACE_STATE_DIR": str(state_dir), "STREAMSPACE_LOCAL_AGENT": "1",
           "ADMIN_PASSWORD": "admin-password-1"}
    port = free_port()
    proc = twistd("streamspace", ["--port", str(port)], env)
    call = _caller(f"http://127.0.0.1:{port}")
    children: set[int] = set()
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", timeout=60)
        token = call("POST", "/api/v1/auth/login",
                     {"username": "admin", "password": "admin-password-1"})["token"]
        _poll(lambda: _agent_online(call, token), "the local agent to come online")
        children = descendants(proc.pid)
        assert "agent" in " ".join(_cmdline(p) for p in children)
        proc.kill()
        proc.wait(timeout=10)
        orphans = wait_gone(children, timeout=10)
        assert orphans == set(), [(_cmdline(p), p) for p in orphans]
    finally:
        out = stop(proc)
        for pid in wait_gone(children, timeout=0):
            os.kill(pid, signal.SIGKILL)  # what this test started must not outlive it

    # What an older or wedged run could leave: a live postmaster of our cluster, and an
    # agent whose argv names our agent state directory.
    cluster = EmbeddedPostgres(state_dir, reactor)  # only for its paths and binaries
    pg_kwargs = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    leftover_db = subprocess.Popen(
        [str(find_bindir() / "postgres"), "-D", str(cluster.data_dir), "-c",
         f"port={free_port()}", "-c", "listen_addresses=127.0.0.1",
         "-c", "unix_socket_directories="], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, **pg_kwargs)
    leftover_pg = leftover_db.pid
    _poll(lambda: "ready" in _read(cluster.data_dir / "postmaster.pid"),
          "the leftover postmaster to be up")
    agent_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AGENT_ID": "local",
                 "CONTROL_PLANE_URL": f"http://127.0.0.1:{free_port()}",
                 "AGENT_TOKEN": "not-a-token", "PYTHONPATH": str(REPO)}
    leftover_agent = subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "agent", "--state-dir", str(state_dir / "agent")],
        env=agent_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        _poll(lambda: "agent" in _cmdline(leftover_agent.pid), "the leftover agent to run")
        proc = twistd("streamspace", ["--port", str(port)], env)
        try:
            wait_http(f"http://127.0.0.1:{port}/ready", timeout=90)
            token = call("POST", "/api/v1/auth/login",
                         {"username": "admin", "password": "admin-password-1"})["token"]
            _poll(lambda: _agent_online(call, token), "the new local agent to come online")
            assert leftover_agent.wait(timeout=30) is not None
            assert leftover_db.wait(timeout=30) is not None and not alive(leftover_pg)
        finally:
            out = stop(proc)
    finally:
        for leftover in (leftover_agent, leftover_db):
            if leftover.poll() is None:
                leftover.kill()
            leftover.wait()
    assert "stopping a leftover local agent" in out, out[-3000:]
    assert "stopping a leftover embedded PostgreSQL" in out, out[-3000:]
    assert "Traceback" not in out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _caller(base: str):
    import json
    import urllib.request

    def call(method, path, body=None, token=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    return call


def _agent_online(call, token):
    try:
        return call("GET", "/api/v1/agents/local", token=token)["status"] == "online"
    except Exception:  # not provisioned yet
        return False


def _poll(check, what, timeout=60.0, interval=0.2):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)  # a blocking test polling a subprocess, not reactor code
    raise AssertionError(f"timed out waiting for {what}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_dev_mode_listens_on_loopback_with_https_wss_and_separate_metrics(state_dir):
    """Issue 9 item 3: dev mode binds 127.0.0.1 when LISTEN_ADDRESS is not given and the
    banner says where it really listens; with --tls-cert/--tls-key the same port serves
    HTTPS and WSS (the local agent connects over wss, trusting a private CA), and plain
    HTTP gets nothing. METRICS_ADDRESS moves /metrics to its own port (item 4)."""
    import ssl
    import urllib.error
    import urllib.request

    from tests.support.tls_certs import make_ca_and_server

    ca, cert, key = make_ca_and_server(state_dir / "tls")
    port, metrics_port = free_port(), free_port()
    token = "metrics-token-for-tests-0123"
    proc = twistd("streamspace", ["--port", str(port), "--tls-cert", str(cert),
                                  "--tls-key", str(key)],
                  {"STREAMSPACE_STATE_DIR": str(state_dir), "STREAMSPACE_LOCAL_AGENT": "1",
                   "ADMIN_PASSWORD": "admin-password-1", "CONTROL_PLANE_CA_FILE": str(ca),
                   "METRICS_ADDRESS": f"127.0.0.1:{metrics_port}", "METRICS_TOKEN": token})
    tls = ssl.create_default_context(cafile=str(ca))
    base = f"https://127.0.0.1:{port}"

    def call(method, path, body=None, bearer=None, at=base):
        import json

        headers = {"Content-Type": "application/json"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        req = urllib.request.Request(at + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        with urllib.request.urlopen(req, timeout=10, context=tls) as r:
            raw = r.read()
            return json.loads(raw) if r.headers["Content-Type"] == "application/json" else raw

    try:
        _poll(lambda: _answers(lambda: call("GET", "/ready")), "/ready over HTTPS")
        assert listening_addresses(port) == {"127.0.0.1"}
        assert listening_addresses(metrics_port) == {"127.0.0.1"}
        admin = call("POST", "/api/v1/auth/login",
                     {"username": "admin", "password": "admin-password-1"})["token"]
        _poll(lambda: _answers(lambda: call("GET", "/api/v1/agents/local", bearer=admin)
                               ["status"] == "online"), "the local agent online over wss")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            raise AssertionError("plain HTTP was answered on the TLS port")
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            assert not isinstance(e, urllib.error.HTTPError), e
        with pytest.raises(urllib.error.HTTPError) as refused:
            call("GET", "/metrics", bearer=token)
        assert refused.value.code == 404
        scrape = call("GET", "/metrics", bearer=token, at=f"https://127.0.0.1:{metrics_port}")
        assert b"streamspace_websocket_connections" in scrape
        assert b"streamspace_agents{status=" in scrape
    finally:
        out = stop(proc)
    assert f"listening on https://127.0.0.1:{port}" in out, out[-3000:]
    assert f"metrics served on https://127.0.0.1:{metrics_port}/metrics" in out
    assert token not in out
    assert "Traceback" not in out


def _answers(check):
    try:
        return check()
    except OSError:  # not up yet (URLError is an OSError)
        return False
