"""A platform driver that runs nothing, for testing the agent's channel and executor.

It stands in for a real platform where the agent's own logic is under test: each call is
recorded, a started session's VNC endpoint is a configurable TCP address (a test server
standing in for a VNC server), starts can be held until the test releases them (and are
then listed `starting`, as a real driver lists a session that is coming up), a cancelled
start leaves nothing behind. It keeps the driver contract (agent/platforms/base.py); the
contract suite (tests/integration/agent/test_driver_contract.py) checks that it does.

With a shared `FakePlatform`, sessions outlive the driver like containers or pods do
(`outlives_agent`): a new driver on the same platform finds them in `start()`. With a
shared platform and `outlives_agent=False` they are the agent's children, like local
processes: `start()` reaps the running ones a dead predecessor left (hibernated ones are
kept for a wake) and `shutdown()` stops them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer, reactor

from agent.platforms.base import (
    HIBERNATED,
    RUNNING,
    STARTING,
    Capacity,
    DriverError,
    PlatformDriver,
    SessionInfo,
    SessionTemplate,
    Usage,
    UserRef,
    VncEndpoint,
    check_capacity,
)


@dataclass
class FakePlatform:
    """Where fake sessions "run": outlives the driver when it is shared between two."""

    sessions: dict[str, SessionInfo] = field(default_factory=dict)
    templates: dict[str, SessionTemplate] = field(default_factory=dict)
    homes: dict[str, str] = field(default_factory=dict)


class FakeDriver(PlatformDriver):
    name = "local"

    def __init__(self, capacity: Capacity | None = None,
                 endpoint: VncEndpoint | None = None,
                 platform: FakePlatform | None = None,
                 outlives_agent: bool | None = None) -> None:
        super().__init__(capacity or Capacity())
        self.outlives_agent = platform is not None if outlives_agent is None else outlives_agent
        self._reaps = platform is not None and not self.outlives_agent
        self.platform = platform or FakePlatform()
        self.endpoint = endpoint or VncEndpoint("127.0.0.1", 5999)
        self.calls: list[tuple[str, str]] = []
        self.endpoints: dict[str, VncEndpoint] = {}
        self.deadlines: dict[str, float | None] = {}
        self.hold: defer.Deferred | None = None  # set to make starts wait for it
        self.fail_with: str | None = None
        self.started = False

    @property
    def sessions(self) -> dict[str, SessionInfo]:
        return self.platform.sessions

    @property
    def templates(self) -> dict[str, SessionTemplate]:
        return self.platform.templates

    def add_running(self, session_id: str, endpoint: VncEndpoint | None = None) -> None:
        self.sessions[session_id] = SessionInfo(session_id, RUNNING)
        self.endpoints[session_id] = endpoint or self.endpoint

    def end_session(self, session_id: str, state: str, reason: str) -> None:
        """The session ends by itself (its process died): the agent is told."""
        self._forget(session_id)
        self.report_status(session_id, state, reason)

    def start(self) -> None:
        self.started = True
        for session_id, info in list(self.sessions.items()):
            if self._reaps and info.state in (RUNNING, STARTING):
                self._forget(session_id)  # a dead predecessor's child: reaped
            elif info.state == RUNNING:
                self.endpoints[session_id] = self.endpoint

    async def _held(self) -> None:
        """Wait for `hold` without consuming it: other starts wait for it too, and a
        cancelled start cancels only its own wait."""
        hold = self.hold
        if hold is None:
            return
        mine: defer.Deferred = defer.Deferred()

        def release(result):
            if not mine.called:
                mine.callback(None)
            return result

        hold.addBoth(release)
        await mine

    async def _start(self, session_id: str, template: SessionTemplate) -> None:
        if self.fail_with:
            raise DriverError(self.fail_with)
        current = self.sessions.get(session_id)
        if current is not None and current.state == RUNNING:
            return
        check_capacity(self.capacity, self.usage(), template)
        self.sessions[session_id] = SessionInfo(session_id, STARTING)
        self.templates[session_id] = template
        self.platform.homes.setdefault(session_id, f"home-of-{session_id}")
        self.report_progress(session_id, "starting the fake session")
        try:
            await self._held()
        except BaseException:
            self._forget(session_id)
            raise
        self.add_running(session_id)

    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str, deadline: float | None = None) -> defer.Deferred[None]:
        self.calls.append(("start_session", session_id))
        self.deadlines[session_id] = deadline
        return defer.ensureDeferred(self._start(session_id, template))

    def wake_session(self, session_id: str, template: SessionTemplate,
                     user: UserRef | None, deadline: float | None = None
                     ) -> defer.Deferred[None]:
        self.calls.append(("wake_session", session_id))
        self.deadlines[session_id] = deadline
        return defer.ensureDeferred(self._start(session_id, template))

    def _forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.endpoints.pop(session_id, None)
        self.templates.pop(session_id, None)

    def stop_session(self, session_id: str, deadline: float | None = None,
                     purge: bool = False) -> defer.Deferred[None]:
        self.calls.append(("stop_session", session_id))
        self._forget(session_id)
        self.platform.homes.pop(session_id, None)
        return defer.succeed(None)

    def hibernate_session(self, session_id: str, deadline: float | None = None
                          ) -> defer.Deferred[None]:
        self.calls.append(("hibernate_session", session_id))
        if self.sessions.get(session_id, SessionInfo("", "")).state != RUNNING:
            return defer.fail(DriverError("the session is not running on this agent"))
        self.sessions[session_id] = SessionInfo(session_id, HIBERNATED)
        self.endpoints.pop(session_id, None)
        return defer.succeed(None)

    def vnc_endpoint(self, session_id: str) -> defer.Deferred:
        endpoint = self.endpoints.get(session_id)
        if endpoint is None:
            return defer.fail(DriverError("the session is not running on this agent"))
        return defer.succeed(endpoint.client_endpoint(reactor))

    def list_sessions(self) -> list[SessionInfo]:
        return list(self.sessions.values())

    def usage(self) -> Usage:
        active = [sid for sid, s in self.sessions.items() if s.state in (RUNNING, STARTING)]
        tpl = [self.templates[sid] for sid in active if sid in self.templates]
        return Usage(len(active), sum(t.cpu for t in tpl),
                     sum(t.memory_mb for t in tpl) / 1024)

    def shutdown(self) -> defer.Deferred[list[str]]:
        if self.outlives_agent:
            self.endpoints.clear()
            return defer.succeed([])
        ids = [sid for sid, s in self.sessions.items() if s.state == RUNNING]
        self.sessions.clear()
        self.endpoints.clear()
        return defer.succeed(ids)
