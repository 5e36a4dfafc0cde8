"""Sessions for real: the control plane, a `twistd agent` process, the local platform
(real Xvnc and xterm), a real PostgreSQL. Each test states the failure it proves handled."""

import json
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import run
from tests.support.http import poll
from tests.support.polling import until
from tests.support.stack import make_stack, xvnc_pids

pytestmark = pytest.mark.slow


async def commands_of(stack, session_id: str) -> list[tuple[str, str]]:
    """(command id, status) of a session's queued commands, oldest first."""
    rows = await stack.service.getServiceNamed("database").db.query(
        "SELECT id, status FROM agent_commands WHERE session_id = %s ORDER BY created_at",
        (session_id,))
    return [(str(r[0]), r[1]) for r in rows]


def journalled(agent, command_id: str) -> str | None:
    """The agent's own record of a command: its journal's last line for the id."""
    status = None
    path = agent.state_dir / "commands.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("id") == command_id:
            status = entry.get("status")
    return status


def kill_xvnc(agent, session_id: str) -> None:
    """The session's VNC server dies (the user's desktop crashed)."""
    for pid in xvnc_pids(agent, session_id):
        os.kill(pid, signal.SIGKILL)


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
async def test_agent_killed_after_its_driver_started_the_session_is_reaped_and_reconciled(
        migrated_dsn):
    """SIGKILL the agent once its driver has started the session's VNC server: whatever
    the control plane heard before the kill, the next agent start reaps what is left and
    the session ends `failed` with a sentence, never `running` with nothing behind it;
    the command does not stay in flight; the next session works."""
    stack = make_stack(migrated_dsn, COMMAND_TIMEOUT="30s")
    await stack.start()
    try:
        token = await stack.provision_agent("e2e-kill")
        agent = await stack.start_agent("e2e-kill", token=token)
        session = await stack.create_session("terminal")
        sid = session["id"]
        await until(lambda: stack.xvnc_count(agent, sid) == 1, 30, interval=0.005,
                    what="the driver starting the session's VNC server")
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        again = await stack.start_agent("e2e-kill", token=token)
        await until(lambda: stack.xvnc_count(again, sid) == 0, 10,
                    what="the restarted agent reaping what the killed one left")
        # (`running` may show for a moment if the start's outcome reached the control
        # plane before the kill: the new agent's register then reconciles it)
        failed = await stack.wait_state(sid, "failed", timeout=40)
        assert len(failed["error"].split()) >= 4, failed  # a sentence, not a code
        assert [status for _, status in await commands_of(stack, sid)][0] in (
            "completed", "failed", "timeout")
        second = await stack.create_session("terminal")
        assert (await stack.wait_state(second["id"], "running", "failed"))["state"] == "running"
        assert (await stack.session(sid))["state"] == "failed"
        assert stack.xvnc_count(again, sid) == 0
    finally:
        leaked = stack.cleanup_agents()
        await stack.stop()
    assert not leaked


@pytest_twisted.ensureDeferred
async def test_a_start_finished_while_the_control_plane_was_down_is_not_replayed_after_a_reap(
        migrated_dsn):
    """Issue 10 item 1 (and 9 item 15): the agent completes a start the control plane
    never commits (it is down), the agent is killed and restarted (it reaps the session),
    the control plane comes back and redelivers the start. Replaying the journalled
    `complete` would show `running` with no VNC server; the agent checks it against its
    driver and answers `failed` with a sentence instead, and runs nothing again."""
    stack = make_stack(migrated_dsn, COMMAND_TIMEOUT="90s")
    await stack.start()
    try:
        token = await stack.provision_agent("e2e-replay")
        agent = await stack.start_agent("e2e-replay", token=token)
        agent.proc.send_signal(signal.SIGSTOP)  # the start will wait in its socket
        sid = (await stack.create_session("terminal"))["id"]
        [(command_id, _)] = await poll_commands(stack, sid, "sent")
        await stack.stop()  # the control plane goes away before the agent answers
        agent.proc.send_signal(signal.SIGCONT)  # reads the start, runs it, cannot report
        await until(lambda: journalled(agent, command_id) == "complete", 30,
                    what="the agent completing the start while the control plane is down")
        assert stack.xvnc_count(agent, sid) == 1
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        again = await stack.start_agent("e2e-replay", token=token, wait_online=False)
        await until(lambda: stack.xvnc_count(again, sid) == 0, 30,
                    what="the restarted agent reaping the session")
        await stack.start()
        await stack.wait_agent("e2e-replay", "online")
        settled = await stack.wait_state(sid, "failed", "running", timeout=40)
        assert settled["state"] == "failed", settled
        assert "this agent started the session but no longer runs it" in settled["error"]
        assert await commands_of(stack, sid) == [(command_id, "failed")]
        assert journalled(again, command_id) == "failed"  # and it stays the answer
        assert stack.xvnc_count(again, sid) == 0  # nothing was started again
    finally:
        leaked = stack.cleanup_agents()
        await stack.stop()
    assert not leaked


async def poll_commands(stack, session_id: str, status: str) -> list[tuple[str, str]]:
    async def check():
        rows = await commands_of(stack, session_id)
        return rows if rows and all(s == status for _, s in rows) else None

    return await poll(check, what=f"the commands of {session_id} to be {status}")


@pytest_twisted.ensureDeferred
async def test_control_plane_restart_keeps_sessions_and_runs_an_in_flight_start_once(
        migrated_dsn):
    """The control plane restarts while an agent runs a session and a start is in flight;
    the agent runs the start while the control plane is down, and that new session's
    desktop dies before the control plane is back. The running session stays running;
    the redelivered start is answered from the journal (checked against the driver), not
    run again: without at-most-once the agent would start the dead session anew."""
    stack = make_stack(migrated_dsn, COMMAND_TIMEOUT="90s")
    await stack.start()
    try:
        agent = await stack.start_agent("e2e-restart")
        first = await stack.create_session("terminal")
        await stack.wait_state(first["id"], "running")
        agent.proc.send_signal(signal.SIGSTOP)
        sid = (await stack.create_session("terminal"))["id"]
        [(command_id, _)] = await poll_commands(stack, sid, "sent")
        await stack.stop()
        agent.proc.send_signal(signal.SIGCONT)
        await until(lambda: journalled(agent, command_id) == "complete", 30,
                    what="the start run while the control plane is down")
        kill_xvnc(agent, sid)
        await until(lambda: stack.xvnc_count(agent, sid) == 0, 20,
                    what="the driver noticing the dead session")
        await stack.start()  # same port, same database
        await stack.wait_agent("e2e-restart", "online", timeout=20)
        # the outbox tells the control plane "started", then "its VNC server died"; the
        # redelivered start is answered from the journal, checked against the driver
        await until(lambda: f"command {command_id} delivered again" in agent.log(), 20,
                    what="the agent answering the redelivered start from its journal")
        assert stack.xvnc_count(agent, sid) == 0  # not started anew
        ended = await stack.wait_state(sid, "failed", "stopped", "running")
        assert ended["state"] in ("failed", "stopped"), ended
        await poll(lambda: _finished(stack, sid), what="the start's command settled")
        assert [status for _, status in await commands_of(stack, sid)] in (
            ["completed"], ["failed"])
        assert (await stack.wait_state(first["id"], "running"))["state"] == "running"
        assert stack.xvnc_count(agent, first["id"]) == 1
    finally:
        leaked = stack.cleanup_agents()
        await stack.stop()
    assert not leaked


async def _finished(stack, session_id: str) -> bool:
    return all(status not in ("pending", "sent", "ack")
               for _, status in await commands_of(stack, session_id))


@pytest_twisted.ensureDeferred
async def test_an_outcome_lost_with_its_connection_is_answered_again_after_reconnect(
        migrated_dsn, tmp_path):
    """Issue 10 item 10: an outcome written to a connection that dies before it arrives
    is not lost. The control plane redelivers the in-flight command after the agent
    reconnects, and the agent answers it from its journal without running it again.
    (An in-process agent whose driver stands in for a platform; the hub is the real one.)"""
    from twisted.internet import reactor

    from agent.endpoints import ControlPlaneAddress
    from agent.service import build_agent
    from tests.support.fake_driver import FakeDriver

    stack = make_stack(migrated_dsn, COMMAND_TIMEOUT="60s")
    await stack.start()
    agent = None
    try:
        token = await stack.provision_agent("e2e-lost")
        driver = FakeDriver()
        driver.hold = defer.Deferred()
        agent = build_agent(reactor, agent_id="e2e-lost",
                            address=ControlPlaneAddress.parse(stack.base), token=token,
                            driver=driver, state_dir=tmp_path / "agent", heartbeat_interval=1.0)
        agent.startService()
        await stack.wait_agent("e2e-lost", "online")
        sid = (await stack.create_session("terminal"))["id"]
        await until(lambda: driver.calls, 20, what="the start reaching the driver")
        link, lost = agent.channel.link, []
        send = link.send_text

        def dies_while_sending(text: str) -> bool:
            if not lost and '"type":"complete"' in text:
                lost.append(text)
                link.transport.abortConnection()  # written, never delivered
                return True
            return send(text)

        link.send_text = dies_while_sending
        driver.hold.callback(None)
        running = await stack.wait_state(sid, "running", "failed")
        assert running["state"] == "running", running
        [(command_id, status)] = await commands_of(stack, sid)
        assert status == "completed"
        assert len(lost) == 1 and command_id in lost[0]  # the first answer never arrived
        assert driver.calls == [("start_session", sid)]  # and the start ran once
    finally:
        if agent is not None:
            await agent.stopService()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_session_process_dying_is_reported(stack):
    agent = await stack.start_agent("e2e-die")
    session = await stack.create_session("terminal")
    sid = session["id"]
    await stack.wait_state(sid, "running")
    kill_xvnc(agent, sid)
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
