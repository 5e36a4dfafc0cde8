"""The Docker driver under the contract suite: the suite's own dockerd (shared with every
other module of the run that uses it, tests/support/dockerd.py) and the session image
built on it (deploy/session-images, tests/support/docker_sessions.py); containers use host
networking, so all traffic stays on loopback. Ground truth is what the engine reports."""

from __future__ import annotations

import contextlib
import json
from urllib.parse import quote

from twisted.internet import defer, threads

from agent.platforms.base import Capacity, PlatformDriver, SessionTemplate
from agent.platforms.docker import spec as S
from agent.platforms.docker.driver import DockerDriver
from tests.integration.agent.contract.harness import DriverHarness
from tests.support.docker_sessions import DockerHarness as DockerDrivers
from tests.support.docker_sessions import session_image
from tests.support.dockerd import shared_engine

AGENT_ID = "contract-docker"


class DockerHarness(DriverHarness):
    reports_start_progress = True

    async def setup(self) -> None:
        self._engine = contextlib.ExitStack()
        engine = await threads.deferToThread(self._engine.enter_context, shared_engine())
        image = await threads.deferToThread(session_image, engine)
        self.docker = DockerDrivers(engine, image, agent_id=AGENT_ID)
        self._closing: list[defer.Deferred] = []

    async def teardown(self) -> None:
        try:
            await defer.gatherResults(self._closing, consumeErrors=True)
            await self.docker.shutdown()
            await threads.deferToThread(self.docker.cleanup)
        finally:
            await threads.deferToThread(self._engine.close)

    def make(self, capacity: Capacity) -> PlatformDriver:
        return self.docker.make(capacity)

    def template(self) -> SessionTemplate:
        return self.docker.template()

    def _containers(self, session_id: str, **filters: list[str]) -> list[dict]:
        query = json.dumps({"label": [f"{S.AGENT}={AGENT_ID}", f"{S.SESSION}={session_id}"],
                            **filters})
        status, body = self.docker.engine.api(
            "GET", f"/containers/json?all=1&filters={quote(query)}")
        assert status == 200, body
        return body

    def really_runs(self, session_id: str) -> bool:
        return bool(self._containers(session_id, status=["running", "paused", "restarting"]))

    def home_of(self, driver: PlatformDriver, session_id: str) -> str:
        """The volume mounted as the session's home (a wake may recreate the container
        when its port was taken while it slept, never the volume)."""
        (container,) = self._containers(session_id)
        return ",".join(sorted(m["Name"] for m in container["Mounts"]
                               if m.get("Type") == "volume"))

    def end_session(self, driver: PlatformDriver, session_id: str) -> None:
        """The container dies (SIGKILL to its processes), as when its program crashes."""
        (container,) = self._containers(session_id, status=["running"])
        status, body = self.docker.engine.api("POST", f"/containers/{container['Id']}/kill")
        assert status == 204, body

    def abandon(self, driver: PlatformDriver) -> None:
        """A killed agent's events stream and engine connections die with it."""
        super().abandon(driver)
        assert isinstance(driver, DockerDriver)
        self._closing.append(driver.shutdown())

    def leftovers(self) -> list[str]:
        return [name for names in self.docker.leftovers()["containers"]
                for name in names.split(",")]
