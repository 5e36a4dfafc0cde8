"""The container images, built from deploy/docker/ and run on the suite's private dockerd,
do what deploy/README.md tells operators: the control plane against an external PostgreSQL
(DATABASE_URL + JWT_SECRET, `--migrate-only` first), the agent registered the way the Helm
chart's Job does it (`python -m streamspace.agents.provisioning`) and run against it, a session whose
pixels come through the VNC proxy, everything stopped cleanly, nothing left behind.

Containers use `--network host`: the suite's PostgreSQL, the control plane, the agent and
Xvnc all talk over the host's loopback, and the test reaches them there too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.internet.error import ConnectError
from twisted.internet.utils import getProcessOutputAndValue

from streamspace.db.pool import Database
from tests.support.http import poll
from tests.support.polling import until
from tests.support.processes import database_url, descendants, free_port
from tests.support.stack import Stack
from tests.support.ws_tcp_bridge import Bridge, fresh_vnc_url
from tests.support.xvnc_sessions import VNCDO

IMAGE_UID = 10001
ADMIN_PASSWORD = "admin-password-for-image-tests"


def docker(engine, *args, check=True):
    """The real docker CLI, off the reactor thread (a build or a stop can take a while)."""
    return threads.deferToThread(engine.cli, *args, check=check)


# As the Helm chart runs them: no capabilities, no privilege escalation, a read-only root
# with only the state directory and /tmp writable.
LOCKED_DOWN = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--tmpfs", "/tmp", "--tmpfs",
               f"/var/lib/streamspace:uid={IMAGE_UID},gid={IMAGE_UID},mode=0700"]


def env_file(path: Path, values: dict[str, str]) -> str:
    """Secrets reach the containers through a 0600 file, never through argv."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    return str(path)


async def inspect(engine, name: str) -> dict:
    out = await docker(engine, "inspect", name)
    return json.loads(out.stdout)[0]


def uids(pid: int) -> dict[int, tuple[int, str]]:
    """Real uid and command of `pid` and each of its descendants, from /proc."""
    found = {}
    for p in {pid} | descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        found[p] = (uid, cmd)
    return found


async def applied_migrations(dsn: str) -> list[str]:
    db = Database(dsn, 1, reactor)
    await db.start()
    try:
        rows = await db.query("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        db.close()
    return [str(r[0]) for r in rows]


@pytest.fixture
def containers(dockerd):
    """Names of the containers a test starts; removed even if the test fails."""
    names: list[str] = []
    yield names
    for name in names:
        dockerd.cli("rm", "--force", name, check=False)


@pytest_twisted.ensureDeferred
async def test_images_run_the_product_end_to_end(dockerd, images, empty_dsn, tmp_path,
                                                 containers):
    port = free_port()
    cp_env = env_file(tmp_path / "control-plane.env", {
        "DATABASE_URL": database_url(empty_dsn), "JWT_SECRET": "image-test-secret-" + "y" * 40,
        "ADMIN_PASSWORD": ADMIN_PASSWORD, "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1",
        "AGENT_HEARTBEAT_TIMEOUT": "6s", "COMMAND_TIMEOUT": "30s"})

    # 1. The schema, applied once by the image itself, as the README says.
    containers.append("ss-migrate")
    await docker(dockerd, "run", "--name", "ss-migrate", "--network", "host",
                 "--env-file", cp_env, images["control-plane"], "--migrate-only")
    migrate = await inspect(dockerd, "ss-migrate")
    assert migrate["State"]["ExitCode"] == 0
    expected = sorted(p.name.split("_")[0] for p in Path("schema").glob("[0-9]*.sql"))
    assert [v.zfill(4) for v in await applied_migrations(empty_dsn)] == expected

    # 2. The control plane: ready against that database, healthy, not root, noVNC served.
    containers.append("ss-control-plane")
    await docker(dockerd, "run", "-d", "--name", "ss-control-plane", "--network", "host",
                 *LOCKED_DOWN, "--env-file", cp_env, "--health-interval", "1s",
                 "--health-start-period", "0s",
                 images["control-plane"])
    stack = Stack(dsn=empty_dsn, port=port, state_dir=tmp_path, env={})

    async def ready():
        try:
            response = await treq.get(stack.base + "/ready")
        except ConnectError:
            return False
        await response.content()
        return response.code == 200

    await poll(ready, timeout=60, what="the control-plane container's /ready")

    async def healthy(name):
        return (await inspect(dockerd, name))["State"].get("Health", {}).get("Status") == "healthy"

    await poll(lambda: healthy("ss-control-plane"), timeout=30, what="a healthy control plane")
    cp_pid = (await inspect(dockerd, "ss-control-plane"))["State"]["Pid"]
    cp_procs = uids(cp_pid)
    assert any("twistd" in cmd for _, cmd in cp_procs.values()), cp_procs
    assert {uid for uid, _ in cp_procs.values()} == {IMAGE_UID}, cp_procs
    novnc = await treq.get(stack.base + "/novnc/core/rfb.js")
    assert novnc.code == 200 and b"RFB" in await novnc.content()

    # 3. The agent, in its own container, with the local platform (Xvnc inside it).
    # Registered as the Helm chart's migration Job does it: a token the deployment made,
    # mounted as a file, its hash written by the control-plane image's provisioning command.
    stack.token = await stack.login("admin", ADMIN_PASSWORD)
    token_file = tmp_path / "agent-token"
    token_file.write_text("deployment-made-token-" + "z" * 32 + "\n")
    os.chown(token_file, IMAGE_UID, IMAGE_UID)
    token_file.chmod(0o400)
    token_mount = ["-v", f"{token_file}:/run/secrets/agent-token:ro"]
    provision_env = env_file(tmp_path / "provision.env", {
        "DATABASE_URL": database_url(empty_dsn), "AGENT_ID": "container-agent",
        "AGENT_PLATFORM": "local", "AGENT_TOKEN_FILE": "/run/secrets/agent-token"})
    provisioned = await docker(dockerd, "run", "--rm", "--network", "host", *LOCKED_DOWN,
                               *token_mount, "--env-file", provision_env, "--entrypoint", "tini",
                               images["control-plane"], "--", "python", "-m",
                               "streamspace.agents.provisioning")
    assert "agent container-agent: created" in provisioned.stdout, provisioned
    # Docker's default seccomp profile refuses the user namespace bubblewrap needs, so the
    # local platform has no sandbox in this container: sessions would run as the agent's
    # user and could impersonate it. The agent runs none unless the operator says this
    # agent serves one trusted user (deploy/README.md), as this test does.
    agent_env = env_file(tmp_path / "agent.env", {
        "AGENT_ID": "container-agent", "AGENT_TOKEN_FILE": "/run/secrets/agent-token",
        "CONTROL_PLANE_URL": stack.base, "PLATFORM": "local", "HEARTBEAT_INTERVAL": "1s",
        "LOCAL_ALLOW_UNSANDBOXED": "true"})
    containers.append("ss-agent")
    # Host networking shares the host's abstract X11 sockets: the agent must see which
    # displays the host's X servers hold, so it gets the host's /tmp/.X11-unix.
    await docker(dockerd, "run", "-d", "--name", "ss-agent", "--network", "host",
                 *LOCKED_DOWN, *token_mount, "--env-file", agent_env,
                 "-v", "/tmp/.X11-unix:/tmp/.X11-unix",
                 "--health-interval", "1s", "--health-start-period", "0s", images["agent"])
    await stack.wait_agent("container-agent", "online", timeout=60)
    await poll(lambda: healthy("ss-agent"), timeout=30, what="a healthy agent container")
    logged = await docker(dockerd, "logs", "ss-agent")
    started_logs = logged.stdout + logged.stderr
    assert "bubblewrap cannot create a sandbox here" in started_logs, started_logs[-3000:]
    assert "can impersonate this agent" in started_logs, started_logs[-3000:]

    # 4. A session, and real pixels through the control plane's VNC proxy.
    session = await stack.create_session("terminal")
    sid = session["id"]
    running = await stack.wait_state(sid, "running", "failed", timeout=60)
    assert running["state"] == "running", running
    agent_pid = (await inspect(dockerd, "ss-agent"))["State"]["Pid"]
    xvnc = {p: u for p, u in uids(agent_pid).items() if "Xvnc" in u[1]}
    assert len(xvnc) == 1 and {uid for uid, _ in xvnc.values()} == {IMAGE_UID}, xvnc

    bridge = Bridge(fresh_vnc_url(stack.base, stack.ws_base, sid, stack.token))
    shot = tmp_path / "desktop.png"

    async def drawn_frame():
        """One real VNC client connection through the proxy; the frame once xterm drew."""
        out, err, code = await getProcessOutputAndValue(
            VNCDO, ["-t", "30", "-s", f"127.0.0.1::{bridge.port}", "capture", str(shot)],
            env=dict(os.environ), reactor=reactor)
        assert code == 0, (out, err, bridge.errors, bridge.close_reasons)
        from PIL import Image

        with Image.open(shot) as image:
            assert image.size == (1280, 800)
            return len(image.convert("RGB").getcolors(maxcolors=1 << 24)) > 20  # xterm text

    try:
        await poll(drawn_frame, timeout=30, interval=0.5, what="a drawn frame through the proxy")
    finally:
        bridge.close()

    # 5. Delete the session, stop both containers (SIGTERM: clean exits), nothing left.
    code, body = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
    assert code in (202, 204), body

    async def terminated():
        code, body = await stack.request("GET", f"/api/v1/sessions/{sid}")
        return code == 404 or body["state"] == "terminated"

    await poll(terminated, timeout=30, what="the session to terminate")
    await until(lambda: not any(p in descendants(agent_pid) for p in xvnc), timeout=20,
                what="the session's Xvnc to exit")
    for name in ("ss-agent", "ss-control-plane"):
        await docker(dockerd, "stop", "--time", "30", name)
        state = (await inspect(dockerd, name))["State"]
        logs = (await docker(dockerd, "logs", "--tail", "40", name)).stdout
        # twistd stops cleanly on SIGTERM, then exits by re-raising it (128 + 15): not the
        # 137 of a SIGKILL after docker's grace period.
        assert (state["Running"], state["ExitCode"], state["OOMKilled"]) == (False, 143, False), \
            (name, state, logs)
        assert "Server Shut Down." in logs, logs
    for name in list(containers):
        await docker(dockerd, "rm", name)
        containers.remove(name)
    assert dockerd.leftovers() == {"containers": [], "volumes": [], "networks": []}
