"""The Kubernetes driver under the contract suite: the fake API server (it stands for a
cluster; real clients keep it honest in tests/integration/agent/kubernetes/
test_fake_contract.py) with the agent's Role from deploy/kubernetes/rbac.yaml enforced,
whose pods "run" a real Xvnc; ground truth is what the API server holds (pods that are
not being deleted), never the driver's caches."""

from __future__ import annotations

from twisted.internet import reactor

from agent.platforms.base import Capacity, PlatformDriver, SessionTemplate
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.kubernetes.driver import KubernetesDriver
from tests.fakes.kube.harness import NAMESPACE, KubeHarness
from tests.integration.agent.contract.harness import DriverHarness
from tests.support.xvnc_sessions import kill_leftovers

AGENT_ID = "contract-k8s"


class KubernetesHarness(DriverHarness):
    reports_start_progress = True

    async def setup(self) -> None:
        self.kube = KubeHarness(reactor, self.workdir / "kube")
        await self.kube.start()

    async def teardown(self) -> None:
        await self.kube.stop()
        assert not kill_leftovers(self.kube.directory), "the test Xvnc outlived the module"

    def make(self, capacity: Capacity) -> PlatformDriver:
        # the port-forward: VNC through the API server, as an agent outside the cluster
        return self.kube.driver(agent_id=AGENT_ID, capacity=capacity)

    def template(self) -> SessionTemplate:
        return self.kube.template()

    def _objects(self, plural: str, session_id: str) -> list[dict]:
        return [o for o in self.kube.fake.objects(plural, NAMESPACE)
                if k8s.session_of(o) == session_id]

    def _pods(self, session_id: str) -> list[dict]:
        return [p for p in self._objects("pods", session_id)
                if not p["metadata"].get("deletionTimestamp")]

    def really_runs(self, session_id: str) -> bool:
        return bool(self._pods(session_id))

    def home_of(self, driver: PlatformDriver, session_id: str) -> str:
        """The Deployment (by uid) a wake scales up again: hibernate keeps it at 0."""
        (dep,) = self._objects("deployments", session_id)
        return dep["metadata"]["uid"]

    def end_session(self, driver: PlatformDriver, session_id: str) -> None:
        """The session's container exits (its application or VNC server died): the
        kubelet restarts it with back-off, as for any crashing container."""
        (pod,) = self._pods(session_id)
        self.kube.fake.crash_pod(NAMESPACE, pod["metadata"]["name"])

    def abandon(self, driver: PlatformDriver) -> None:
        """A killed agent's watches and API connections die with it: close them now, or
        this instance would go on acting on the cluster beside the next one."""
        super().abandon(driver)
        assert isinstance(driver, KubernetesDriver)
        driver.shutdown()

    def leftovers(self) -> list[str]:
        return [p["metadata"]["name"] for p in self.kube.fake.objects("pods", NAMESPACE)
                if p["metadata"]["labels"].get(k8s.AGENT) == AGENT_ID
                and not p["metadata"].get("deletionTimestamp")]
