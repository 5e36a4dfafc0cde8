"""A platform driver that runs nothing, for testing the agent's channel and executor.

Each call is recorded; a started session's VNC endpoint is a configurable TCP address (e.g.
a test server standing in for a VNC server); starts can be held until the test releases
them. It keeps the driver contract (agent/platforms/base.py) as far as it goes.
"""

from __future__ import annotations

from twisted.internet import defer, reactor

from agent.platforms.base import (
    HIBERNATED,
    RUNNING,
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


class FakeDriver(PlatformDriver):
    name = "local"

    def __init__(self, capacity: Capacity | None = None,
                 endpoint: VncEndpoint | None = None) -> None:
        super().__init__(capacity or Capacity())
        self.endpoint = endpoint or VncEndpoint("127.0.0.1", 5999)
        self.calls: list[tuple[str, str]] = []
        self.sessions: dict[str, SessionInfo] = {}
        self.endpoints: dict[str, VncEndpoint] = {}
        self.templates: dict[str, SessionTemplate] = {}
        self.deadlines: dict[str, float | None] = {}
        self.hold: defer.Deferred | None = None  # set to make starts wait for it
        self.fail_with: str | None = None

    def add_running(self, session_id: str, endpoint: VncEndpoint | None = None) -> None:
        self.sessions[session_id] = SessionInfo(session_id, RUNNING)
        self.endpoints[session_id] = endpoint or self.endpoint

    async def _start(self, session_id: str, template: SessionTemplate) -> None:
        if self.fail_with:
            raise DriverError(self.fail_with)
        if self.sessions.get(session_id, SessionInfo("", "")).state == RUNNING:
            return
        check_capacity(self.capacity, self.usage(), template)
        self.templates[session_id] = template
        if self.hold is not None:
            await self.hold
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

    def stop_session(self, session_id: str, deadline: float | None = None,
                     purge: bool = False) -> defer.Deferred[None]:
        self.calls.append(("stop_session", session_id))
        self.sessions.pop(session_id, None)
        self.endpoints.pop(session_id, None)
        self.templates.pop(session_id, None)
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
        running = [sid for sid, s in self.sessions.items() if s.state == RUNNING]
        tpl = [self.templates[sid] for sid in running if sid in self.templates]
        return Usage(len(running), sum(t.cpu for t in tpl),
                     sum(t.memory_mb for t in tpl) / 1024)

    def shutdown(self) -> defer.Deferred[list[str]]:
        ids = [sid for sid, s in self.sessions.items() if s.state == RUNNING]
        self.sessions.clear()
        self.endpoints.clear()
        return defer.succeed(ids)
