"""Sessions for real: the control plane, a `twistd agent` process, the local platform
(real Xvnc and xterm), a real PostgreSQL. Each test states the failure it proves handled."""

import signal

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import run
from tests.support.http import poll
from tests.support.polling import until
from tests.support.stack import make_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(migrated_dsn):
    s = make_stack(migrated_dsn)
    run(s.start())
    yield s
    leaked = s.cleanup_agents()
    run(s.stop())
    assert not leaked, f"session processes left behind: {leaked}"


@pytest_twisted.ensureDeferred
async def test_full_lifecycle_leaves_nothing_behind(stack):
    agent = await stack.start_agent("e2e-life")
    session = await stack.create_session("terminal")
    sid = session["id"]
    running = await stack.wait_state(sid, "running", "failed")
    assert running["state"] == "running", running
    assert running["agent_id"] == "e2e-life" and running["platform"] == "local"
    assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")
    assert stack.xvnc_count(agent, sid) == 1

    code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "hibernated"})
    assert code in (200, 202), body
    await stack.wait_state(sid, "hibernated")
    assert stack.xvnc_count(agent, sid) == 0

    code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "running"})
    assert code in (200, 202), body
    await stack.wait_state(sid, "running")
    assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")

    code, body = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
    assert code in (202, 204), body

    async def terminated():
        code, body = await stack.request("GET", f"/api/v1/sessions/{sid}")
        return code == 404 or body["state"] == "terminated"

    await poll(terminated, what="the session to terminate")
    await until(lambda: stack.xvnc_count(agent, sid) == 0, timeout=20, what="Xvnc to be gone")
    events = await stack.service.getServiceNamed("database").db.query(
        "SELECT state FROM session_events WHERE session_id = %s ORDER BY id", (sid,))
    seen = [e[0] for e in events]
    for state in ("pending", "scheduled", "starting", "running", "hibernating", "hibernated",
                  "waking", "terminating", "terminated"):
        assert state in seen, seen


@pytest_twisted.ensureDeferred
async def test_agent_killed_mid_start_times_out_then_reconciles(migrated_dsn):
    """The agent dies (SIGKILL) after the start command reached it but before it finished:
    the command times out, the session fails with a reason; the next agent start is clean."""
    stack = make_stack(migrated_dsn, COMMAND_TIMEOUT="4s")
    await stack.start()
    try:
        agent = await stack.start_agent("e2e-kill")
        agent.proc.send_signal(signal.SIGSTOP)  # frozen: the command sits unread
        session = await stack.create_session("terminal")
        sid = session["id"]
        await stack.wait_state(sid, "scheduled", "starting")
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        failed = await stack.wait_state(sid, "failed", timeout=30)
        assert "did not start" in failed["error"] and "timed out" in failed["error"]
        rows = await stack.service.getServiceNamed("database").db.query(
            "SELECT status FROM agent_commands WHERE session_id = %s", (sid,))
        assert [r[0] for r in rows] == ["timeout"]
        # the agent starts again with a fresh process: registers, and new sessions work
        code, body = await stack.request("POST", "/api/v1/agents/e2e-kill/token")
        again = await stack.start_agent("e2e-kill", token=body["token"])
        second = await stack.create_session("terminal")
        assert (await stack.wait_state(second["id"], "running", "failed"))["state"] == "running"
        assert (await stack.session(sid))["state"] == "failed"
        assert stack.xvnc_count(again, sid) == 0
    finally:
        leaked = stack.cleanup_agents()
        await stack.stop()
    assert not leaked


@pytest_twisted.ensureDeferred
async def test_control_plane_restart_keeps_sessions_and_delivers_once(migrated_dsn):
    """Restart the control plane while an agent runs a session and a start command is in
    flight: the agent reconnects, the running session stays running, and the in-flight
    command (seen by the agent before the restart and redelivered after) runs once."""
    stack = make_stack(migrated_dsn)
    await stack.start()
    try:
        agent = await stack.start_agent("e2e-restart")
        first = await stack.create_session("terminal")
        await stack.wait_state(first["id"], "running")
        agent.proc.send_signal(signal.SIGSTOP)
        second = await stack.create_session("terminal")
        await stack.wait_state(second["id"], "scheduled")
        await stack.restart()  # same port, same database
        agent.proc.send_signal(signal.SIGCONT)
        await stack.wait_agent("e2e-restart", "online", timeout=20)
        assert (await stack.wait_state(second["id"], "running", "failed"))["state"] == "running"
        assert (await stack.wait_state(first["id"], "running"))["state"] == "running"
        assert stack.xvnc_count(agent, second["id"]) == 1
        assert stack.xvnc_count(agent, first["id"]) == 1
        rows = await stack.service.getServiceNamed("database").db.query(
            "SELECT status FROM agent_commands WHERE session_id = %s", (second["id"],))
        # one command row, completed, and one Xvnc for the session: whether the agent read
        # the command before the restart and got it again after (answered from its journal,
        # "delivered again" in its log) or only after, it ran exactly once
        assert [r[0] for r in rows] == ["completed"]
    finally:
        leaked = stack.cleanup_agents()
        await stack.stop()
    assert not leaked


@pytest_twisted.ensureDeferred
async def test_session_process_dying_is_reported(stack):
    agent = await stack.start_agent("e2e-die")
    session = await stack.create_session("terminal")
    sid = session["id"]
    await stack.wait_state(sid, "running")
    import os

    from tests.support.xvnc_sessions import session_pids

    for pid in session_pids(agent.state_dir, sid):
        if b"Xvnc" in open(f"/proc/{pid}/cmdline", "rb").read():
            os.kill(pid, signal.SIGKILL)
    failed = await stack.wait_state(sid, "failed", timeout=20)
    assert failed["error"], failed


@pytest_twisted.ensureDeferred
async def test_agent_capacity_respected_under_concurrent_creates(stack):
    await stack.start_agent("e2e-cap", extra_env={"MAX_SESSIONS": "2"})
    results = await defer.gatherResults([
        defer.Deferred.fromCoroutine(stack.request("POST", "/api/v1/sessions",
                                                   {"template": "terminal"}))
        for _ in range(5)])
    ids = [body["id"] for code, body in results if code == 201]
    finals = [await stack.wait_state(i, "running", "failed") for i in ids]
    running = [s for s in finals if s["state"] == "running"]
    assert len(running) == 2, [(s["state"], s["error"]) for s in finals]
    assert all("capacity" in s["error"] for s in finals if s["state"] == "failed")



@pytest_twisted.ensureDeferred
async def test_progress_events_stream_until_running(stack):
    """GET /sessions/{id}/events is Server-Sent Events: every state change in order, and the
    stream ends once the session settles (here: running)."""
    import json as _json

    import treq

    await stack.start_agent("e2e-sse")
    session = await stack.create_session("terminal")
    response = await treq.get(f"{stack.base}/api/v1/sessions/{session['id']}/events",
                              headers={"Authorization": f"Bearer {stack.token}"})
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0] == "text/event-stream"
    body = (await response.content()).decode()  # returns once the server ends the stream
    states = [_json.loads(line[len("data: "):])["state"] for line in body.splitlines()
              if line.startswith("data: ")]
    assert states[0] == "pending" and states[-1] == "running", states
    assert states.index("scheduled") < states.index("starting") < states.index("running")
    other = await stack.create_user("eve")
    r = await treq.get(f"{stack.base}/api/v1/sessions/{session['id']}/events",
                       headers={"Authorization": f"Bearer {other}"})
    assert r.code == 404
    r = await treq.get(f"{stack.base}/api/v1/sessions/{session['id']}/events")
    assert r.code == 401
