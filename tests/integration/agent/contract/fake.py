"""The fake driver (tests/support/fake_driver.py) under the contract suite: it stands in
for a real platform in the agent's own tests, so it must keep the same promises. A real
TCP server answering an RFB banner stands in for the VNC server; `FakePlatform` is the
"platform" both variants' ground truth is read from."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, reactor

from agent.platforms.base import (
    RUNNING,
    STARTING,
    Capacity,
    PlatformDriver,
    SessionTemplate,
    VncEndpoint,
)
from tests.integration.agent.contract.harness import DriverHarness
from tests.support.fake_driver import FakeDriver, FakePlatform
from tests.support.tcp_peers import PeerServer


class FakeHarness(DriverHarness):
    """Sessions are the agent's children (as local processes are)."""

    reports_start_progress = True
    outlives = False

    async def setup(self) -> None:
        self.platform = FakePlatform()
        self.vnc = PeerServer(greeting=b"RFB 003.008\n")
        self.vnc_port = reactor.listenTCP(0, self.vnc, interface="127.0.0.1")

    async def teardown(self) -> None:
        await self.vnc_port.stopListening()

    def make(self, capacity: Capacity) -> PlatformDriver:
        return FakeDriver(capacity, VncEndpoint("127.0.0.1", self.vnc_port.getHost().port),
                          platform=self.platform, outlives_agent=self.outlives)

    def template(self) -> SessionTemplate:
        return SessionTemplate(name="fake", cpu=0.5, memory_mb=256)

    def really_runs(self, session_id: str) -> bool:
        info = self.platform.sessions.get(session_id)
        return info is not None and info.state in (RUNNING, STARTING)

    def home_of(self, driver: PlatformDriver, session_id: str) -> str:
        return self.platform.homes[session_id]

    def end_session(self, driver: PlatformDriver, session_id: str) -> None:
        assert isinstance(driver, FakeDriver)
        driver.end_session(session_id, "failed", "the fake session's process was killed")

    def hold_next_start(self, driver: PlatformDriver) -> Callable[[], None]:
        assert isinstance(driver, FakeDriver)
        driver.hold = hold = defer.Deferred()

        def release() -> None:
            driver.hold = None
            if not hold.called:
                hold.callback(None)

        return release

    def leftovers(self) -> list[str]:
        left = [sid for sid in self.platform.sessions if self.really_runs(sid)]
        self.platform.sessions.clear()
        return left


class OutlivingFakeHarness(FakeHarness):
    """Sessions outlive the agent (as containers and pods do)."""

    outlives = True
