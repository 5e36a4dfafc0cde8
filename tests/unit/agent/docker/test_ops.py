"""ContainerOps against a scripted engine client: the orderings a real engine makes
rare (two removals of one container overlapping) made certain. The contract suite
(tests/integration/agent/test_driver_contract.py) meets the same race on a real dockerd:
a stop that arrives while the driver clears away a container that ended by itself."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from agent.platforms.base import DriverError
from agent.platforms.docker import spec as S
from agent.platforms.docker.engine import EngineError
from agent.platforms.docker.ops import ContainerOps, DockerSession


class ScriptedEngine:
    """Answers every call at once, except container DELETEs, which wait for the test;
    a second DELETE of a container being removed gets the engine's 409."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.deleting: dict[str, defer.Deferred] = {}

    def call(self, method, path, params=None, body=None, timeout=None):
        self.calls.append((method, path))
        if method == "DELETE" and path.startswith("/containers/"):
            if path in self.deleting:
                return defer.fail(EngineError(409, f"removal of container {path} is "
                                              "already in progress"))
            self.deleting[path] = defer.Deferred()
            return self.deleting[path]
        return defer.succeed(None)


def _session(ops: ContainerOps) -> DockerSession:
    sess = DockerSession("s1", {S.HOME_VOLUME: "streamspace-session-s1"}, container_id="c1")
    ops.sessions["s1"] = sess
    return sess


def test_a_second_removal_waits_for_the_first_and_sends_nothing_twice():
    engine = ScriptedEngine()
    ops = ContainerOps(engine, "agent-1")
    sess = _session(ops)
    ended = defer.ensureDeferred(ops.remove(sess, keep_volume=False))
    stop = defer.ensureDeferred(ops.remove(sess, keep_volume=False, graceful=True))
    assert not ended.called and not stop.called
    engine.deleting["/containers/c1"].callback(None)
    assert ended.called and stop.called and stop.result is None
    assert engine.calls.count(("DELETE", "/containers/c1")) == 1
    assert engine.calls.count(("DELETE", "/volumes/streamspace-session-s1")) == 1
    assert "s1" not in ops.sessions and sess.removal is None


def test_a_failed_removal_fails_its_waiters_too():
    engine = ScriptedEngine()
    ops = ContainerOps(engine, "agent-1")
    sess = _session(ops)
    first = defer.ensureDeferred(ops.remove(sess, keep_volume=True))
    second = defer.ensureDeferred(ops.remove(sess, keep_volume=True))
    engine.deleting["/containers/c1"].errback(EngineError(500, "driver failed"))
    for d in (first, second):
        with pytest.raises(DriverError, match="driver failed"):
            d.result.raiseException()
        d.addErrback(lambda _f: None)
