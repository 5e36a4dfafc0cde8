"""The Docker platform end to end: the real control plane, a real `twistd agent` process
with PLATFORM=docker on the suite's dockerd (host networking: all traffic on loopback),
real session containers from the session image, a real VNC client through the proxy."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from PIL import Image
from twisted.internet import reactor, threads
from twisted.internet.utils import getProcessOutputAndValue

from agent.platforms.docker import spec as S
from tests.conftest import run
from tests.support.docker_sessions import XTERM
from tests.support.http import poll
from tests.support.polling import until
from tests.support.stack import make_stack
from tests.support.ws_tcp_bridge import Bridge

pytestmark = pytest.mark.slow

VNCDO = str(Path(sys.executable).parent / "vncdo")


@pytest.fixture
def stack(migrated_dsn, dockerd):
    s = make_stack(migrated_dsn)
    run(s.start())
    yield s
    s.cleanup_agents()
    run(s.stop())
    for agent in s.agents:  # containers outlive agents: whatever is left was leaked
        left = dockerd.cli("ps", "-aq", "--filter", f"label={S.AGENT}={agent.agent_id}")
        ids = left.stdout.split()
        if ids:
            dockerd.cli("rm", "--force", *ids)
        volumes = dockerd.cli("volume", "ls", "-q", "--filter",
                              f"label={S.AGENT}={agent.agent_id}").stdout.split()
        if volumes:
            dockerd.cli("volume", "rm", "--force", *volumes)
        assert not ids, f"containers left behind by {agent.agent_id}: {ids}"


def docker_env(dockerd) -> dict:
    return {"DOCKER_HOST": dockerd.host, "DOCKER_NETWORK": "host"}


async def add_template(stack, name: str, image: str, docker: dict | None = None,
                       **fields) -> None:
    body = {"name": name, "display_name": name, "cpu": 0.5, "memory_mb": 256,
            "platforms": {"docker": {"image": image, **(docker or {})}}, **fields}
    code, answer = await stack.request("POST", "/api/v1/templates", body)
    assert code == 201, answer


async def container_of(dockerd, session_id: str, all_states: bool = True) -> list[dict]:
    args = ["ps", "--no-trunc", "--format", "{{json .}}", "--filter",
            f"label={S.SESSION}={session_id}"] + (["--all"] if all_states else [])
    out = (await threads.deferToThread(dockerd.cli, *args)).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def vnc_url_factory(stack, session_id: str):
    """Runs in the bridge's thread: a new single-use VNC token per connection."""
    def factory() -> str:
        req = urllib.request.Request(f"{stack.base}/api/v1/sessions/{session_id}/vnc-token",
                                     method="POST",
                                     headers={"Authorization": f"Bearer {stack.token}"})
        return stack.ws_base + json.load(urllib.request.urlopen(req, timeout=10))["url"]

    return factory


async def vncdo(bridge: Bridge, *actions: str) -> None:
    out, err, code = await getProcessOutputAndValue(
        VNCDO, ["-t", "20", "-s", f"127.0.0.1::{bridge.port}", *actions],
        env=dict(os.environ), reactor=reactor)
    assert code == 0, (err.decode(errors="replace")[-800:], bridge.errors, bridge.close_reasons)


async def in_home(dockerd, container: str, name: str) -> bool:
    result = await threads.deferToThread(dockerd.cli, "exec", container, "test", "-e",
                                         f"/home/streamspace/{name}", check=False)
    return result.returncode == 0


@pytest_twisted.ensureDeferred
async def test_docker_session_lifecycle_with_pixels_and_keys(stack, dockerd, session_image,
                                                             tmp_path):
    await add_template(stack, "docker-terminal", session_image, {"command": XTERM},
                       persistent_home=True)
    await stack.start_agent("e2e-docker", platform="docker", extra_env=docker_env(dockerd))
    session = await stack.create_session("docker-terminal")
    sid = session["id"]
    running = await stack.wait_state(sid, "running", "failed", timeout=60)
    assert running["state"] == "running", running
    assert running["platform"] == "docker" and running["agent_id"] == "e2e-docker"
    [container] = await container_of(dockerd, sid)
    assert container["State"] == "running"
    labels = dict(item.split("=", 1) for item in container["Labels"].split(","))
    assert labels[S.AGENT] == "e2e-docker" and labels[S.TEMPLATE] == "docker-terminal"

    bridge = Bridge(vnc_url_factory(stack, sid))
    try:
        # pixels through the control plane: a real VNC client captures the xterm (which
        # draws a moment after its display accepts RFB)
        shot = tmp_path / "desktop.png"

        async def drawn() -> bool:
            await vncdo(bridge, "capture", str(shot))
            with Image.open(shot) as image:
                assert image.size == (1280, 800)
                return len(image.convert("RGB").getcolors(maxcolors=1 << 24)) > 20

        await poll(drawn, timeout=20, what="the xterm on the captured frame")
        # keys typed in the viewer reach the session: the shell in the xterm runs them
        await vncdo(bridge, "move", "200", "100", "click", "1", "type", "touch typed-mark",
                    "key", "enter")
        await poll(lambda: in_home(dockerd, container["ID"], "typed-mark"), timeout=15,
                   what="the typed command to run in the session")

        code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}",
                                         {"state": "hibernated"})
        assert code in (200, 202), body
        await stack.wait_state(sid, "hibernated")
        [asleep] = await container_of(dockerd, sid)
        assert asleep["State"] == "exited" and asleep["Names"] == f"streamspace-{sid}-hibernated"

        code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "running"})
        assert code in (200, 202), body
        await stack.wait_state(sid, "running", timeout=60)
        assert await in_home(dockerd, container["ID"], "typed-mark")  # the home was kept
        assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")
    finally:
        bridge.close()

    events = await stack.service.getServiceNamed("database").db.query(
        "SELECT state, message FROM session_events WHERE session_id = %s ORDER BY id", (sid,))
    messages = [m for _, m in events]
    assert "container created" in messages, messages
    assert "container started; waiting for its VNC server" in messages

    code, body = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
    assert code in (202, 204), body
    await poll(lambda: _terminated(stack, sid), what="the session to terminate")
    await poll(lambda: _no_container(dockerd, sid), what="its container to be removed")


async def _terminated(stack, sid: str) -> bool:
    code, body = await stack.request("GET", f"/api/v1/sessions/{sid}")
    return code == 404 or body["state"] == "terminated"


async def _no_container(dockerd, sid: str) -> bool:
    return not await container_of(dockerd, sid)


@pytest_twisted.ensureDeferred
async def test_failed_sessions_show_their_reason(stack, dockerd, session_image):
    await add_template(stack, "no-such-image", "streamspace/no-such-image:1")
    await add_template(stack, "exits-at-once", session_image,
                       {"entrypoint": "echo cannot start >&2; exit 4"})
    await add_template(stack, "memory-hog", session_image,
                       {"entrypoint": "echo eating; tail /dev/zero"}, memory_mb=32)
    await stack.start_agent("e2e-docker-fail", platform="docker",
                            extra_env=docker_env(dockerd))
    expected = {"no-such-image": "the image streamspace/no-such-image:1 could not be pulled",
                "exits-at-once": "exited at start with code 4 (last output: cannot start)",
                "memory-hog": "ran out of memory (its limit is 32 MB)"}
    sessions = {name: (await stack.create_session(name))["id"] for name in expected}
    for name, sid in sessions.items():
        failed = await stack.wait_state(sid, "failed", "running", timeout=30)
        assert failed["state"] == "failed", (name, failed)
        assert expected[name] in failed["error"], (name, failed["error"])
        assert not await container_of(dockerd, sid), name


@pytest_twisted.ensureDeferred
async def test_sessions_keep_running_while_the_agent_restarts(stack, dockerd, session_image):
    await add_template(stack, "docker-terminal", session_image, {"command": XTERM})
    agent = await stack.start_agent("e2e-docker-restart", platform="docker",
                                    extra_env=docker_env(dockerd))
    sid = (await stack.create_session("docker-terminal"))["id"]
    await stack.wait_state(sid, "running", timeout=60)
    [before] = await container_of(dockerd, sid)

    agent.proc.send_signal(signal.SIGTERM)  # waited for on the reactor: the control plane
    await until(lambda: agent.proc.poll() is not None, timeout=30, what="the agent to exit")
    assert agent.proc.returncode in (0, -signal.SIGTERM), agent.log()[-2000:]
    assert "agent stopped (0 session(s) stopped)" in agent.log()  # left running, by policy
    [during] = await container_of(dockerd, sid)
    assert during["ID"] == before["ID"] and during["State"] == "running"

    code, body = await stack.request("POST", "/api/v1/agents/e2e-docker-restart/token")
    assert code == 200, body
    await stack.start_agent("e2e-docker-restart", token=body["token"], platform="docker",
                            extra_env=docker_env(dockerd))
    assert (await stack.wait_state(sid, "running"))["state"] == "running"
    assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")
    [after] = await container_of(dockerd, sid)
    assert after["ID"] == before["ID"]  # the same container, found again by its labels
    code, body = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
    assert code in (202, 204), body
    await poll(lambda: _no_container(dockerd, sid), what="its container to be removed")
