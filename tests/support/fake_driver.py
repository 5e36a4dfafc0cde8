"""A platform driver that runs nothing, for testing the agent's channel and executor.

Each call is recorded; `start_session` fires with a configurable endpoint (e.g. a test TCP
server standing in for a VNC server) or stays pending until the test releases it.
"""

from __future__ import annotations

from twisted.internet import defer

from agent.platforms.base import (
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
        self.templates: dict[str, SessionTemplate] = {}
        self.hold: defer.Deferred | None = None  # set to make starts wait for it
        self.fail_with: str | None = None

    def add_running(self, session_id: str, endpoint: VncEndpoint | None = None) -> None:
        self.sessions[session_id] = SessionInfo(session_id, "running", endpoint or self.endpoint)

    async def _start(self, session_id: str, template: SessionTemplate) -> VncEndpoint:
        if self.fail_with:
            raise DriverError(self.fail_with)
        if session_id in self.sessions:
            return self.sessions[session_id].vnc
        check_capacity(self.capacity, self.usage(), template)
        self.templates[session_id] = template
        if self.hold is not None:
            await self.hold
        self.add_running(session_id)
        return self.endpoint

    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str) -> defer.Deferred[VncEndpoint]:
        self.calls.append(("start_session", session_id))
        return defer.ensureDeferred(self._start(session_id, template))

    def wake_session(self, session_id: str, template: SessionTemplate,
                     user: UserRef | None) -> defer.Deferred[VncEndpoint]:
        self.calls.append(("wake_session", session_id))
        return defer.ensureDeferred(self._start(session_id, template))

    def stop_session(self, session_id: str) -> defer.Deferred[None]:
        self.calls.append(("stop_session", session_id))
        self.sessions.pop(session_id, None)
        self.templates.pop(session_id, None)
        return defer.succeed(None)

    def hibernate_session(self, session_id: str) -> defer.Deferred[None]:
        self.calls.append(("hibernate_session", session_id))
        if session_id not in self.sessions:
            return defer.fail(DriverError("the session is not running on this agent"))
        self.sessions.pop(session_id)
        return defer.succeed(None)

    def list_sessions(self) -> list[SessionInfo]:
        return list(self.sessions.values())

    def usage(self) -> Usage:
        tpl = list(self.templates.values())
        return Usage(len(self.sessions), sum(t.cpu for t in tpl),
                     sum(t.memory_mb for t in tpl) / 1024)

    def stop_all(self) -> defer.Deferred[list[str]]:
        ids = list(self.sessions)
        self.sessions.clear()
        return defer.succeed(ids)
