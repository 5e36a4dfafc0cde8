"""Fixtures for the VNC proxy tests: the real control plane (in this process, so the relay
can be inspected) and agents: a real `twistd agent` with Xvnc where the VNC server must be
real, or the real agent code in this process with a driver whose "sessions" are test TCP
servers, where the test must control every byte the VNC server sends."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from twisted.internet import reactor

from agent.endpoints import ControlPlaneAddress
from agent.platforms.base import VncEndpoint
from agent.service import build_agent
from tests.conftest import run
from tests.support.fake_driver import FakeDriver
from tests.support.stack import make_stack
from tests.support.tcp_peers import PeerServer


@pytest.fixture
def stack(migrated_dsn):
    # limits high enough for the 500-viewer burst; tests that need lower ones set them
    s = make_stack(migrated_dsn, MAX_SESSIONS_PER_USER="20", MAX_VIEWERS_PER_SESSION="600",
                   MAX_VIEWERS_PER_USER="700")
    run(s.start())
    yield s
    leaked = s.cleanup_agents()
    run(s.stop())
    assert not leaked, f"session processes left behind: {leaked}"


class EndpointDriver(FakeDriver):
    """Each new session's "VNC server" is the next test TCP server in line."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[VncEndpoint] = []
        self.by_session: dict[str, VncEndpoint] = {}

    async def _start(self, session_id, template):
        if session_id not in self.by_session:
            self.by_session[session_id] = self.queue.pop(0)
        self.endpoint = self.by_session[session_id]
        return await super()._start(session_id, template)


class InProcessAgent:
    def __init__(self, stack, agent_id: str) -> None:
        self.stack = stack
        self.agent_id = agent_id
        self.driver = EndpointDriver()
        self.service = None
        self.servers: list[PeerServer] = []

    async def start(self) -> None:
        token = await self.stack.provision_agent(self.agent_id)
        state = Path(tempfile.mkdtemp(prefix="streamspace-relay-agent-"))
        self.service = build_agent(reactor, agent_id=self.agent_id,
                                   address=ControlPlaneAddress.parse(self.stack.base),
                                   token=token, driver=self.driver, state_dir=state,
                                   heartbeat_interval=1.0)
        self.service.startService()
        await self.stack.wait_agent(self.agent_id, "online")

    async def session_on(self, greeting: bytes = b"", token: str | None = None
                         ) -> tuple[str, PeerServer]:
        """A running session (of the user whose login `token` is given, else the admin)
        whose VNC server is a fresh test TCP server."""
        server = PeerServer(greeting)
        port = server.listen(reactor)
        self.servers.append(server)
        self.driver.queue.append(VncEndpoint("127.0.0.1", port))
        session = await self.stack.create_session("terminal", token=token)
        running = await self.stack.wait_state(session["id"], "running", "failed")
        assert running["state"] == "running", running
        return session["id"], server

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stopService()
        for server in self.servers:
            await server.close()


@pytest.fixture
def fake_agent(stack):
    agent = InProcessAgent(stack, "relay-agent")
    run(agent.start())
    yield agent
    run(agent.stop())
