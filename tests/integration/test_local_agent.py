"""The dev-mode local agent as the control plane runs it: a real `twistd agent` child
with an allow-listed environment, restarted when it dies, stopped with the service.

Its control-plane URL points at a closed loopback port: the agent keeps trying to
connect (with backoff) and stays alive, which is all these tests need of it.
"""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from streamspace.local_agent import LocalAgentService
from streamspace.processes import process_alive
from streamspace_common import procfs
from tests.support.polling import until
from tests.support.processes import free_port

SECRETS = {"METRICS_TOKEN": "metrics-token-0123456789", "DB_PASSWORD": "db-password",
           "DATABASE_URL": "postgresql://u:db-password@db/x", "JWT_SECRET": "j" * 40,
           "ADMIN_PASSWORD": "admin-password-1", "AGENT_TOKEN": "an-agent-token",
           "SOME_OPERATOR_SECRET": "not-for-sessions", "AGENT_STATE_DIR": "/elsewhere"}


class _ReadyDatabase:
    """The DatabaseService's `ready` Deferred, over the test's migrated database."""

    def __init__(self, db) -> None:
        self.ready = defer.succeed(db)


@pytest.fixture
def local_agent(db, tmp_path, monkeypatch):
    for name, value in {**SECRETS, "LC_ALL": "C.UTF-8", "HEARTBEAT_INTERVAL": "3s"}.items():
        monkeypatch.setenv(name, value)
    service = LocalAgentService(reactor, _ReadyDatabase(db), tmp_path,
                                f"http://127.0.0.1:{free_port()}")
    service.startService()
    yield service
    if service.running:
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


@pytest_twisted.ensureDeferred
async def test_the_agent_gets_only_allowed_environment(local_agent, tmp_path):
    """Should-fix 8: a deny-list passed METRICS_TOKEN and any operator secret on."""
    proc = await until(lambda: local_agent._proc, timeout=30, what="the agent to start")
    await until(lambda: "agent" in procfs.cmdline(proc.transport.pid),
                what="twistd agent to exec")
    env = procfs.environ(proc.transport.pid)
    assert not set(SECRETS) & set(env), sorted(set(SECRETS) & set(env))
    assert env["AGENT_TOKEN_FILE"] == str(tmp_path / "local-agent.token")
    assert env["AGENT_ID"] == "local" and env["PLATFORM"] == "local"
    assert env["LC_ALL"] == "C.UTF-8" and env["HEARTBEAT_INTERVAL"] == "3s"
    assert env["PATH"] == os.environ["PATH"]


@pytest_twisted.ensureDeferred
async def test_a_dead_agent_is_restarted_and_stopping_stops_it(local_agent):
    first = await until(lambda: local_agent._proc, timeout=30, what="the agent to start")
    os.kill(first.transport.pid, signal.SIGKILL)
    second = await until(lambda: local_agent._proc is not first and local_agent._proc,
                         timeout=30, what="the agent to be restarted")
    assert local_agent._supervisor.restarts == 1
    pid = second.transport.pid
    assert process_alive(pid)
    await local_agent.stopService()
    assert second.ended.called and not process_alive(pid)
    assert not local_agent._supervisor.pending  # and nothing restarts it
