"""The whole product for end-to-end tests: the real control plane service tree (built by
`streamspace.tap.makeService`, in this process so tests can look inside the relay), a real
PostgreSQL database, and real `twistd agent` processes with the local platform (real Xvnc).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import treq
from twisted.internet import defer, reactor

from streamspace import tap
from streamspace.config import ServerOptions
from tests.support.http import poll
from tests.support.processes import REPO, TWISTD, database_url, free_port
from tests.support.xvnc_sessions import inner_pids, kill_leftovers

ADMIN_PASSWORD = "admin-password-for-tests"


@dataclass
class AgentProcess:
    agent_id: str
    proc: subprocess.Popen
    state_dir: Path
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""


@dataclass
class Stack:
    dsn: str
    port: int
    state_dir: Path
    env: dict
    service: object = None
    token: str = ""
    agents: list[AgentProcess] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # -- control plane --------------------------------------------------------------------

    async def start(self) -> None:
        opts = ServerOptions(environ=self.env)
        opts.parseOptions(["--port", str(self.port), "--interface", "127.0.0.1", "--dev"])
        self.service = tap.makeService(opts)
        self.service.privilegedStartService()  # as twistd does: binds the port
        self.service.startService()
        await self.service.getServiceNamed("database").ready
        self.token = await self.login("admin", ADMIN_PASSWORD)

    async def stop(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            await defer.maybeDeferred(service.stopService)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def proxy(self):
        return self.service.getServiceNamed("fleet").proxy

    @property
    def fleet(self):
        return self.service.getServiceNamed("fleet")

    # -- HTTP -----------------------------------------------------------------------------

    async def request(self, method: str, path: str, body=None, token: str | None = None):
        """One API call; the answer is checked against the OpenAPI document (route,
        status, shape), as the API tests check theirs."""
        from tests.integration.api.support import check_against_openapi

        headers = {"Content-Type": "application/json"}
        tok = self.token if token is None else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        data = json.dumps(body).encode() if body is not None else None
        r = await treq.request(method, self.base + path, data=data, headers=headers)
        content = await r.content()
        check_against_openapi(method, path, r.code, content)
        return r.code, (json.loads(content) if content else None)

    async def login(self, username: str, password: str) -> str:
        code, body = await self.request("POST", "/api/v1/auth/login",
                                        {"username": username, "password": password}, token="")
        assert code == 200, body
        return body["token"]

    async def create_user(self, username: str, password: str = "user-password-1") -> str:
        code, body = await self.request("POST", "/api/v1/users",
                                        {"username": username, "password": password,
                                         "role": "user"})
        assert code == 201, body
        return await self.login(username, password)

    async def create_session(self, template: str = "terminal", token: str | None = None,
                             expect: int = 201) -> dict:
        code, body = await self.request("POST", "/api/v1/sessions", {"template": template},
                                        token=token)
        assert code == expect, body
        return body

    async def session(self, session_id: str, token: str | None = None) -> dict:
        code, body = await self.request("GET", f"/api/v1/sessions/{session_id}", token=token)
        assert code == 200, body
        return body

    async def wait_state(self, session_id: str, *wanted: str, timeout: float = 30.0) -> dict:
        async def check():
            s = await self.session(session_id)
            return s if s["state"] in wanted else None

        return await poll(check, timeout=timeout, what=f"session {session_id} to be {wanted}")

    async def vnc_url(self, session_id: str, token: str | None = None) -> str:
        code, body = await self.request("POST", f"/api/v1/sessions/{session_id}/vnc-token",
                                        token=token)
        assert code == 200, body
        return self.ws_base + body["url"]

    async def vnc_banner(self, session_id: str, token: str | None = None) -> bytes:
        """The session's RFB banner, read through the product's VNC path (proxy, tunnel,
        agent, driver endpoint) with a real WebSocket client."""
        from tests.support.wsclient import connect

        client = await connect(await self.vnc_url(session_id, token))
        try:
            banner = b""
            while len(banner) < 12:
                payload, binary = await client.messages.get().addTimeout(10, reactor)
                assert binary
                banner += payload
            return banner[:12]
        finally:
            client.close()

    async def vnc_capture(self, session_id: str, path: Path) -> int:
        """A real VNC client (vncdotool) captures a frame through the product's VNC path
        (a WebSocket bridge plays noVNC's part); returns the frame's distinct colours."""
        import urllib.request

        from twisted.internet.utils import getProcessOutputAndValue

        from tests.support.ws_tcp_bridge import Bridge
        from tests.support.xvnc_sessions import VNCDO, distinct_colours

        base, token, ws_base = self.base, self.token, self.ws_base

        def fresh_url():  # in the bridge's thread: a new VNC token per connection
            req = urllib.request.Request(f"{base}/api/v1/sessions/{session_id}/vnc-token",
                                         method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
            return ws_base + json.load(urllib.request.urlopen(req, timeout=10))["url"]

        bridge = Bridge(fresh_url)
        try:
            out, err, code = await getProcessOutputAndValue(
                VNCDO, ["-t", "20", "-s", f"127.0.0.1::{bridge.port}", "--delay", "300",
                        "capture", str(path)], env=dict(os.environ), reactor=reactor)
        finally:
            bridge.close()
        assert code == 0, (out, err, bridge.errors, bridge.close_reasons)
        return distinct_colours(path)

    # -- agents ---------------------------------------------------------------------------

    async def provision_agent(self, agent_id: str, platform: str = "local") -> str:
        code, body = await self.request("POST", "/api/v1/agents",
                                        {"agent_id": agent_id, "platform": platform})
        assert code == 201, body
        return body["token"]

    async def start_agent(self, agent_id: str = "agent-e2e", token: str | None = None,
                          extra_env: dict | None = None, wait_online: bool = True,
                          platform: str = "local") -> AgentProcess:
        """A real `twistd agent`; `extra_env` overrides its environment (PLATFORM,
        DOCKER_* or KUBECONFIG settings, REGION...)."""
        token = token or await self.provision_agent(agent_id, platform)
        state = self.state_dir / f"agent-{agent_id}"
        state.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / f"agent-{agent_id}.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
               "PYTHONUNBUFFERED": "1", "AGENT_ID": agent_id, "AGENT_TOKEN": token,
               "CONTROL_PLANE_URL": self.base, "PLATFORM": platform,
               "AGENT_STATE_DIR": str(state), "HEARTBEAT_INTERVAL": "1s",
               "LOG_LEVEL": "debug", **(extra_env or {})}
        out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([TWISTD, "--nodaemon", "--pidfile=",
                                 "--logger=streamspace_common.logs.observer", "agent"],
                                env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        agent = AgentProcess(agent_id, proc, state, log_path)
        self.agents.append(agent)
        if wait_online:
            await self.wait_agent(agent_id, "online")
        return agent

    async def wait_agent(self, agent_id: str, status: str, timeout: float = 20.0) -> None:
        async def check():
            code, body = await self.request("GET", f"/api/v1/agents/{agent_id}")
            return code == 200 and body["status"] == status

        await poll(check, timeout=timeout, what=f"agent {agent_id} to be {status}")

    def stop_agent(self, agent: AgentProcess, sig: int = signal.SIGTERM) -> None:
        if agent.proc.poll() is None:
            agent.proc.send_signal(sig)
            try:
                agent.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()

    async def stop_agent_async(self, agent: AgentProcess, sig: int = signal.SIGTERM,
                               timeout: float = 30.0) -> int:
        """Signal the agent and wait for it with the reactor running, so the control
        plane in this process can answer its goodbye; returns its exit code."""
        from tests.support.polling import until

        if agent.proc.poll() is None:
            agent.proc.send_signal(sig)
        try:
            await until(lambda: agent.proc.poll() is not None, timeout=timeout,
                        interval=0.05, what=f"agent {agent.agent_id} to exit")
        finally:
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
        return agent.proc.returncode

    def xvnc_count(self, agent: AgentProcess, session_id: str) -> int:
        return len(xvnc_pids(agent, session_id))

    def cleanup_agents(self) -> list[int]:
        """Stop every agent (SIGTERM: they stop their sessions), then sweep: whatever still
        runs for their state directories was leaked."""
        for agent in self.agents:
            self.stop_agent(agent)
        leaked = []
        for state_dir in {agent.state_dir for agent in self.agents}:
            leaked += kill_leftovers(state_dir)
        return leaked



def xvnc_pids(agent: AgentProcess, session_id: str) -> list[int]:
    """The session's Xvnc processes, inside its sandbox (one that exits while we look is not
    counted)."""
    return inner_pids(agent.state_dir, session_id, "Xvnc")


def make_stack(dsn: str, **env) -> Stack:
    state_dir = Path(tempfile.mkdtemp(prefix="streamspace-e2e-"))
    os.chmod(state_dir, 0o755)
    base_env = {"DATABASE_URL": database_url(dsn), "JWT_SECRET": "e2e-secret-" + "x" * 40,
                "ADMIN_PASSWORD": ADMIN_PASSWORD, "STREAMSPACE_STATE_DIR": str(state_dir),
                "COMMAND_TIMEOUT": "20s", "AGENT_HEARTBEAT_TIMEOUT": "6s",
                **{k: str(v) for k, v in env.items()}}
    return Stack(dsn=dsn, port=free_port(), state_dir=state_dir, env=base_env)
