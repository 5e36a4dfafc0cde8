"""The whole agent with real Xvnc sessions behind the fake hub: commands drive sessions, a
real VNC client sees the desktop through the agent's tunnel, and `twistd agent` as a real
process shuts down clean or, killed, is reconciled by its next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from agent.platforms.base import Capacity
from agent.platforms.local import LocalDriver
from tests.support.polling import until
from tests.support.xvnc_sessions import (
    capture,
    distinct_colours,
    session_pids,
    xvnc_cmdlines,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
TWISTD = str(Path(sys.executable).parent / "twistd")
TEMPLATE = {"name": "xterm", "vnc_port": 5900, "cpu": 1.0, "memory_mb": 512,
            "env": {}, "persistent_home": True,
            "platforms": {"local": {"command": "xterm -fa Monospace -fs 14"},
                          "kubernetes": {"image": "example/xterm"}}}
USER = {"id": "7d0c6b4e-1111-4222-8333-944455556666", "username": "alice"}
SID = "0b6f3c1e-aaaa-4bbb-8ccc-0123456789ab"


async def run(cp, command_type, session_id=SID, data=None, timeout=30.0, **kw):
    cid = cp.command(command_type, session_id, data or {}, **kw)
    outcome = await cp.outcome(cid, timeout)
    assert outcome["type"] == "complete", outcome["payload"]
    return outcome["payload"]["result"]


async def vnc_screenshot_through_tunnel(cp, path: Path) -> int:
    tunnel_id, secret = cp.allow_tunnel()
    await run(cp, "vnc_connect", data={"tunnel_id": tunnel_id, "secret": secret})
    port = cp.bridge(tunnel_id)
    deadline_colours = 0
    for _ in range(40):
        await capture(port, path)
        deadline_colours = distinct_colours(path)
        if deadline_colours >= 30:
            break
        # each capture is a new VNC connection: a new tunnel for the next try
        tunnel_id, secret = cp.allow_tunnel()
        await run(cp, "vnc_connect", data={"tunnel_id": tunnel_id, "secret": secret})
        port = cp.bridge(tunnel_id)
    return deadline_colours


@pytest_twisted.ensureDeferred
async def test_session_lifecycle_through_the_agent(control_plane, agents, state, tmp_path):
    from twisted.internet import reactor

    driver = LocalDriver(reactor, state, Capacity(max_sessions=2), stop_grace=2.0)
    agent = agents.start(driver)
    await control_plane.wait_connected()

    result = await run(control_plane, "start_session",
                       data={"template": TEMPLATE, "user": USER, "name": "work"})
    assert result == {}  # where its VNC server is stays inside the agent
    agent.channel.heartbeat()
    await until(lambda: control_plane.of_type("heartbeat"), 5, what="a heartbeat")
    beat = control_plane.of_type("heartbeat")[-1]["payload"]
    assert beat["sessions"] == [{"session_id": SID, "state": "running"}]
    assert beat["usage"] == {"sessions": 1, "cpu": 1.0, "memory_gb": 0.5}

    # a real VNC client, through the tunnel, sees the terminal
    colours = await vnc_screenshot_through_tunnel(control_plane, tmp_path / "s.png")
    assert colours >= 30
    await until(lambda: not agent.tunnels.tunnels, 10, what="tunnels closed after viewers")

    await run(control_plane, "hibernate_session", data={})
    assert session_pids(state) == []
    assert (await run(control_plane, "list_sessions", None))["sessions"] == [
        {"session_id": SID, "state": "hibernated"}]
    await run(control_plane, "wake_session", data={"template": TEMPLATE})
    assert (await run(control_plane, "list_sessions", None))["sessions"] == [
        {"session_id": SID, "state": "running"}]

    # the app dies on its own: the control plane hears it
    os.kill(driver.store.load(SID).app_pid, signal.SIGKILL)
    status = await control_plane.wait_frame("session_status", session_id=SID)
    assert status["payload"]["state"] == "failed"
    assert "killed by SIGKILL" in status["payload"]["reason"]
    await until(lambda: session_pids(state) == [], 10, what="Xvnc stopped after the app died")

    await run(control_plane, "stop_session", data={})
    assert xvnc_cmdlines(state) == [] and control_plane.errors == []


def agent_env(cp, state: Path) -> dict[str, str]:
    token_file = state.parent / "token"
    token_file.write_text(cp.token + "\n")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1", "AGENT_ID": cp.agent_id,
            "CONTROL_PLANE_URL": f"http://127.0.0.1:{cp.port}",
            "AGENT_TOKEN_FILE": str(token_file), "AGENT_STATE_DIR": str(state),
            "MAX_SESSIONS": "3", "HEARTBEAT_INTERVAL": "1s", "LOG_LEVEL": "info"}


def start_twistd(cp, state: Path, log: Path) -> subprocess.Popen:
    state.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "--logger=streamspace_common.logs.observer", "agent"],
            env=agent_env(cp, state), cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def processes():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest_twisted.ensureDeferred
async def test_twistd_agent_sigterm_stops_sessions_and_says_so(control_plane, state,
                                                               processes, tmp_path):
    log = tmp_path / "agent.log"
    proc = start_twistd(control_plane, state, log)
    processes.append(proc)
    await control_plane.wait_connected(timeout=30)
    register = control_plane.of_type("register")[0]["payload"]
    assert register["capacity"]["max_sessions"] == 3 and register["sessions"] == []
    await run(control_plane, "start_session",
              data={"template": TEMPLATE, "user": USER, "name": ""})
    assert xvnc_cmdlines(state)
    await until(lambda: control_plane.of_type("heartbeat"), 5, what="a heartbeat")

    proc.send_signal(signal.SIGTERM)
    status = await control_plane.wait_frame("session_status", session_id=SID)
    assert status["payload"]["state"] == "failed"
    assert "agent was shut down" in status["payload"]["reason"]
    await until(lambda: proc.poll() is not None, 20, what="twistd exiting")
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert session_pids(state) == []
    assert 1000 in [code for code, _ in control_plane.closes]
    text = log.read_text()
    assert control_plane.token not in text  # the token never reaches the log
    assert "Unhandled error" not in text and "Traceback" not in text, text[-3000:]


@pytest_twisted.ensureDeferred
async def test_killed_agent_is_reconciled_by_its_next_start(control_plane, state, processes,
                                                           tmp_path):
    log = tmp_path / "agent.log"
    proc = start_twistd(control_plane, state, log)
    processes.append(proc)
    await control_plane.wait_connected(timeout=30)
    start_id = control_plane.command("start_session", SID,
                                     {"template": TEMPLATE, "user": USER, "name": ""})
    assert (await control_plane.outcome(start_id, 30))["type"] == "complete"

    # a second agent on the same state directory is refused, naming it and the holder,
    # and touches nothing (issue 9 items 5 and 15: it used to reap the first's sessions)
    second_log = tmp_path / "second.log"
    second = start_twistd(control_plane, state, second_log)
    processes.append(second)
    await until(lambda: second.poll() is not None, 30, what="the second agent refusing")
    refusal = second_log.read_text()
    assert second.returncode != 0, refusal
    assert f"the state directory {state.absolute()} is in use by another agent " \
           f"(pid {proc.pid})" in refusal
    assert "Traceback" not in refusal
    assert xvnc_cmdlines(state) and control_plane.connections == 1
    assert len(control_plane.of_type("register")) == 1

    proc.send_signal(signal.SIGKILL)
    await until(lambda: proc.poll() is not None, 10, what="the agent dead")
    # its sessions' sandboxes die with it (bwrap --die-with-parent)
    await until(lambda: xvnc_cmdlines(state) == [], 10, what="sessions ended with the agent")
    await until(lambda: control_plane.control is None, 10, what="the hub noticing")

    proc2 = start_twistd(control_plane, state, log)
    processes.append(proc2)
    await until(lambda: len(control_plane.of_type("register")) == 2, 30, what="re-register")
    await control_plane.wait_connected()
    # it reports no sessions and left nothing running...
    assert control_plane.of_type("register")[1]["payload"]["sessions"] == []
    await until(lambda: session_pids(state) == [], 10, what="orphans reaped")
    # ...and a redelivered start is not run again, nor answered with its stored success:
    # the session it started was reaped, so "complete" would be a lie (issue 10 item 1)
    control_plane.command("start_session", SID,
                          {"template": TEMPLATE, "user": USER, "name": ""}, command_id=start_id)
    failed = await until(lambda: control_plane.about(start_id, "failed"), 10,
                         what="the checked outcome")
    assert "no longer runs it" in failed[0]["payload"]["reason"]
    assert session_pids(state) == []
    proc2.send_signal(signal.SIGTERM)
    await until(lambda: proc2.poll() is not None, 20, what="twistd exiting")
