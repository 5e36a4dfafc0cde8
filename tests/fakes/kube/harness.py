"""Everything a test needs to run the Kubernetes driver for real against the fake: a real
Xvnc that the pods of `IMAGE` "run", the fake API server with the agent's Role from
deploy/kubernetes/rbac.yaml enforced, a kubeconfig for the agent, drivers, cleanup.

The shared driver contract suite plugs the Kubernetes driver in through this harness:
`harness = KubeHarness(reactor, tmp); await harness.start(); driver = harness.driver();
await driver.start(); template = harness.template(); ...; await harness.stop()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import defer

from agent.platforms import xvnc
from agent.platforms.base import Capacity, SessionTemplate
from tests.fakes.kube.controller import Timings
from tests.fakes.kube.server import FakeKube, load_role_rules

REPO = Path(__file__).resolve().parents[3]
RBAC = REPO / "deploy" / "kubernetes" / "rbac.yaml"
IMAGE = "registry.example.com/streamspace/xvnc-desktop:1.0"
VNC_PORT = 5901
AGENT_USER = "system:serviceaccount:streamspace:streamspace-agent"
NAMESPACE = "streamspace"


class XvncBackend:
    """A real Xvnc (with an xterm drawing in it) standing in for the VNC server inside
    the session containers."""

    def __init__(self, marker_dir: Path) -> None:
        self.marker_dir = marker_dir
        self.proc: subprocess.Popen | None = None
        self.app: subprocess.Popen | None = None
        self.port = 0
        self._allocator = xvnc.DisplayAllocator(first=40)

    async def start(self, reactor) -> None:
        for _attempt in range(3):
            display, self.port = self._allocator.allocate()
            env = {"PATH": xvnc.default_path(), "HOME": str(self.marker_dir),
                   "STREAMSPACE_AGENT_DIR": str(self.marker_dir)}
            # Every connection here comes from 127.0.0.1 (probes, the driver's RFB checks,
            # viewers), where a cluster has the node's and the agent's addresses: keep
            # TigerVNC's per-host blacklist of unauthenticated connections out of the way.
            argv = xvnc.xvnc_argv(display, self.port, "800x600", desktop="fake-pod")
            argv += ["-BlacklistThreshold", "1000000"]
            self.proc = subprocess.Popen(  # noqa: S603 - test fixture, fixed argv
                argv,
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            try:
                await xvnc.wait_for_rfb(reactor, "127.0.0.1", self.port, 10,
                                        gave_up=lambda: self.proc.poll() is not None)
            except xvnc.RfbNotReady:
                self.stop()
                continue
            self.app = subprocess.Popen(  # noqa: S603 - test fixture, fixed argv
                ["xterm", "-fa", "Monospace", "-fs", "14", "-geometry", "80x24+0+0", "-e",
                 "sh", "-c", "echo 'a session pod on the fake cluster'; exec sleep 86400"],
                env={**env, "DISPLAY": f":{display}"}, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            return
        raise RuntimeError("the test Xvnc did not start")

    def stop(self) -> None:
        for proc in (self.app, self.proc):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.proc = self.app = None


class KubeHarness:
    __test__ = False

    def __init__(self, reactor, directory: Path, timings: Timings | None = None) -> None:
        self.reactor = reactor
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fake = FakeKube(reactor, self.directory / "fake", timings=timings)
        self.backend = XvncBackend(self.directory)
        self.drivers: list = []
        self.agent_token = ""
        self.kubeconfig: Path | None = None

    async def start(self) -> KubeHarness:
        await self.backend.start(self.reactor)
        self.fake.start()
        self.agent_token = self.fake.add_user(AGENT_USER, load_role_rules(RBAC))
        self.fake.serve(IMAGE, VNC_PORT, "127.0.0.1", self.backend.port)
        self.kubeconfig = self.fake.kubeconfig(self.directory / "agent.kubeconfig",
                                               token=self.agent_token)
        return self

    def access(self):
        from agent.platforms.kubernetes import cluster

        return cluster.from_kubeconfig(self.reactor, str(self.kubeconfig), None,
                                       self.directory / "kube-scratch")

    def driver(self, *, vnc_mode: str = "port-forward", agent_id: str = "agent-k8s",
               capacity: Capacity | None = None, **options: Any):
        from agent.platforms.kubernetes.client import KubeClient
        from agent.platforms.kubernetes.driver import KubernetesDriver

        access = self.access()
        driver = KubernetesDriver(self.reactor, KubeClient(self.reactor, access), access,
                                  capacity or Capacity(), namespace=NAMESPACE,
                                  agent_id=agent_id, vnc_mode=vnc_mode, **options)
        self.drivers.append(driver)
        return driver

    @staticmethod
    def template(**changes: Any) -> SessionTemplate:
        k8s = {"image": IMAGE, **changes.pop("kubernetes", {})}
        data = {"name": "xvnc-desktop", "display_name": "Desktop", "vnc_port": VNC_PORT,
                "cpu": 0.5, "memory_mb": 256, "env": {"STREAMSPACE_TEST": "yes"},
                "persistent_home": False, "platforms": {"kubernetes": k8s}}
        data.update(changes)
        return SessionTemplate.from_json(data)

    async def stop(self) -> None:
        try:
            for driver in self.drivers:
                await defer.maybeDeferred(driver.shutdown)
            self.drivers.clear()
            await self.fake.stop()
        finally:
            self.backend.stop()
