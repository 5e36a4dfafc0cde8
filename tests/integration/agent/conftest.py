"""Fixtures for the agent's integration tests: a fake control plane and in-process agents."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from agent.endpoints import ControlPlaneAddress
from agent.service import build_agent
from tests.support.fake_control_plane import FakeControlPlane
from tests.support.fake_driver import FakeDriver
from tests.support.xvnc_sessions import kill_leftovers


def block(d):
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d)
    return pytest_twisted.blockon(d)


@pytest.fixture
def control_plane():
    cp = FakeControlPlane(heartbeat_interval=10.0)
    cp.start()
    yield cp
    block(cp.stop())


class AgentRunner:
    """Starts agents in this process against the fake control plane; stops them all."""

    def __init__(self, cp: FakeControlPlane, state_dir) -> None:
        self.cp, self.state_dir = cp, state_dir
        self.services = []

    def start(self, driver=None, token=None, heartbeat_interval=10.0, state_dir=None,
              address=None, **options):
        """`options` go to build_agent (ping_interval, ping_timeout, retry_policy)."""
        driver = driver or FakeDriver()
        agent = build_agent(reactor, agent_id=self.cp.agent_id,
                            address=address or ControlPlaneAddress.parse(self.cp.url),
                            token=token or self.cp.token, driver=driver,
                            state_dir=state_dir or self.state_dir,
                            heartbeat_interval=heartbeat_interval, **options)
        agent.startService()
        self.services.append(agent)
        return agent

    def stop(self, agent) -> defer.Deferred:
        self.services.remove(agent)
        return defer.maybeDeferred(agent.stopService)

    def stop_all(self) -> None:
        for agent in list(self.services):
            block(self.stop(agent))


@pytest.fixture
def state(tmp_path):
    """The agent's state directory; afterwards, nothing it started may still run."""
    path = tmp_path / "agent"
    yield path
    leaked = kill_leftovers(path)
    assert not leaked, f"session processes left behind: {leaked}"


@pytest.fixture
def agents(control_plane, state):
    runner = AgentRunner(control_plane, state)
    yield runner
    runner.stop_all()
