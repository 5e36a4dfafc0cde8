"""The local driver under the contract suite: real Xvnc and a real xterm per session,
ground truth from the process table (every session process carries its state directory
and session id in its environment)."""

from __future__ import annotations

import os
import shutil
import signal

from twisted.internet import reactor

from agent.platforms.base import Capacity, PlatformDriver, SessionTemplate
from agent.platforms.local import LocalDriver
from tests.integration.agent.contract.harness import DriverHarness
from tests.support.xvnc_sessions import kill_leftovers, session_pids


class LocalHarness(DriverHarness):
    async def setup(self) -> None:
        for program in ("Xvnc", "xterm"):
            assert shutil.which(program), (
                f"{program} is not installed: scripts/setup.sh installs it (the local "
                "driver's contract cannot be checked without it)")
        self.state = self.workdir / "agent"

    def make(self, capacity: Capacity) -> PlatformDriver:
        return LocalDriver(reactor, self.state, capacity, stop_grace=2.0)

    def template(self) -> SessionTemplate:
        return SessionTemplate.from_json({
            "name": "contract-xterm", "cpu": 0.5, "memory_mb": 256,
            "platforms": {"local": {"command": "xterm -geometry 40x10"}}})

    def really_runs(self, session_id: str) -> bool:
        return bool(session_pids(self.state, session_id))

    def home_of(self, driver: PlatformDriver, session_id: str) -> str:
        assert isinstance(driver, LocalDriver)
        return driver.store.load(session_id).home

    def end_session(self, driver: PlatformDriver, session_id: str) -> None:
        assert isinstance(driver, LocalDriver)
        os.kill(driver.store.load(session_id).app_pid, signal.SIGKILL)

    def leftovers(self) -> list[str]:
        return [str(pid) for pid in kill_leftovers(self.state)]
