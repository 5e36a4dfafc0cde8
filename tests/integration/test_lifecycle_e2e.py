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
    """Two of five fit on the agent; the other three wait `pending` (with the reason in
    their events) and one starts as soon as a running one is deleted."""
    await stack.start_agent("e2e-cap", extra_env={"MAX_SESSIONS": "2"})
    results = await defer.gatherResults([
        defer.Deferred.fromCoroutine(stack.request("POST", "/api/v1/sessions",
                                                   {"template": "terminal"}))
        for _ in range(5)])
    ids = [body["id"] for code, body in results if code == 201]
    assert len(ids) == 5

    async def settled():
        found = [(await stack.session(i))["state"] for i in ids]
        return found if sorted(found) == ["pending"] * 3 + ["running"] * 2 else None

    await poll(settled, timeout=30, what="two running, three waiting")
    db = stack.service.getServiceNamed("database").db
    waiting = [i for i in ids if (await stack.session(i))["state"] == "pending"]
    for sid in waiting:
        rows = await db.query("SELECT message FROM session_events WHERE session_id = %s "
                              "ORDER BY id DESC LIMIT 1", (sid,))
        assert "e2e-cap runs 2/2 sessions" in rows[0][0], rows
    running = [i for i in ids if i not in waiting]
    code, _ = await stack.request("DELETE", f"/api/v1/sessions/{running[0]}")
    assert code == 202

    async def one_more():
        found = [(await stack.session(i))["state"] for i in waiting]
        return found if found.count("running") == 1 else None

    await poll(one_more, timeout=30, what="a waiting session to start in the freed place")


@pytest_twisted.ensureDeferred
async def test_a_session_created_before_any_agent_waits_and_runs_when_it_comes(stack):
    """Issue 10 item 13: right after start-up no agent is online yet; the session waits
    `pending`, with the reason in its events, and starts once the agent registers."""
    session = await stack.create_session("terminal")
    sid = session["id"]
    db = stack.service.getServiceNamed("database").db

    async def reason():
        rows = await db.query("SELECT state, message FROM session_events WHERE session_id = %s "
                              "ORDER BY id", (sid,))
        return rows if rows[-1][1].startswith("waiting for an agent") else None

    events = await poll(reason, what="the waiting reason")
    assert events[-1][0] == "pending"
    assert (await stack.session(sid))["state"] == "pending"
    await stack.start_agent("e2e-late")
    assert (await stack.wait_state(sid, "running", "failed"))["state"] == "running"
    assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")


@pytest_twisted.ensureDeferred
async def test_wake_counts_against_the_limit_and_resets_the_idle_clock(migrated_dsn):
    """Issue 10 items 2 and 12 with a real agent: at the limit, a wake is refused and the
    session stays hibernated; once there is room it wakes, with its idle clock restarted
    (it does not fall straight back to sleep)."""
    stack = make_stack(migrated_dsn, MAX_SESSIONS_PER_USER="1", SESSION_IDLE_TIMEOUT="1h")
    await stack.start()
    try:
        await stack.start_agent("e2e-wake")
        first = (await stack.create_session("terminal"))["id"]
        await stack.wait_state(first, "running")
        code, body = await stack.request("PATCH", f"/api/v1/sessions/{first}",
                                         {"state": "hibernated"})
        assert code == 200, body
        await stack.wait_state(first, "hibernated")
        second = (await stack.create_session("terminal"))["id"]  # hibernated ones don't count
        await stack.wait_state(second, "running")
        code, body = await stack.request("PATCH", f"/api/v1/sessions/{first}",
                                         {"state": "running"})
        assert code == 409 and body["error"]["code"] == "session_limit_reached", body
        assert (await stack.session(first))["state"] == "hibernated"
        code, _ = await stack.request("DELETE", f"/api/v1/sessions/{second}")
        assert code == 202
        await stack.wait_state(second, "terminated")
        db = stack.service.getServiceNamed("database").db
        await db.execute("UPDATE sessions SET last_activity = now() - interval '2 hours' "
                         "WHERE id = %s", (first,))
        code, body = await stack.request("PATCH", f"/api/v1/sessions/{first}",
                                         {"state": "running"})
        assert code == 200 and body["state"] == "waking", body
        woken = await stack.wait_state(first, "running")
        # the move to running restarted the idle clock (both are that transaction's now())
        assert woken["last_activity"] == woken["state_changed_at"]
        lifecycle = stack.fleet.lifecycle
        await lifecycle.sweep()  # an idle sweep now finds nothing to hibernate
        assert (await stack.session(first))["state"] == "running"
        assert (await stack.vnc_banner(first)).startswith(b"RFB 003.")
    finally:
        leaked = stack.cleanup_agents()
        await stack.stop()
    assert not leaked


@pytest_twisted.ensureDeferred
async def test_an_application_that_exits_is_stopped_and_restarts_with_its_home(stack):
    """Issue 10 item 12 with a real agent: the application ending by itself (`exit` in a
    terminal) is `stopped`, not `failed`; Restart runs the same template on the same
    agent with the same home (the file it wrote is still there and gets a second line)."""
    code, body = await stack.request("POST", "/api/v1/templates", {
        "name": "blip", "display_name": "Blip", "platforms": {"local": {
            "command": "echo run >> \"$HOME/runs\"; sleep 2"}}})
    assert code == 201, body
    agent = await stack.start_agent("e2e-exit")
    sid = (await stack.create_session("blip"))["id"]
    assert (await stack.wait_state(sid, "running", "stopped", "failed"))["state"] in (
        "running", "stopped")
    stopped = await stack.wait_state(sid, "stopped", "failed", timeout=20)
    assert stopped["state"] == "stopped" and stopped["error"] is None, stopped
    code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "running"})
    assert code == 200 and body["state"] in ("pending", "scheduled", "starting", "running")
    await stack.wait_state(sid, "stopped", "failed", timeout=30)

    async def two_runs():
        found = list(agent.state_dir.rglob("runs"))
        return found if found and found[0].read_text().count("run") == 2 else None

    files = await poll(two_runs, what="the restarted session to write into the same home")
    assert len(files) == 1
    events = [e[0] for e in await stack.service.getServiceNamed("database").db.query(
        "SELECT state FROM session_events WHERE session_id = %s ORDER BY id", (sid,))]
    assert events.count("running") == 2 and events.count("stopped") == 2, events


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
