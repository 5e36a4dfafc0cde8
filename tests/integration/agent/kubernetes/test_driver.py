"""The Kubernetes driver against the fake API server (tests/fakes/kube: it stands for a
real apiserver, scheduler, kubelet and kube-proxy, checked by real clients in
test_fake_contract.py), with a real Xvnc as the process inside the pods: sessions start,
answer RFB through the port-forward and through the Service, hibernate, wake, stop; every
failure kind is reported with the cluster's reason within 10 s; watches survive 410 and
silence; a restarted driver finds its sessions by label."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from agent.platforms.base import Capacity, CapacityError, DriverError, UserRef
from agent.platforms.kubernetes import names
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.kubernetes.spec import session_spec
from agent.platforms.xvnc import read_rfb_banner
from tests.fakes.kube.harness import AGENT_USER, IMAGE, NAMESPACE
from tests.support.polling import until

pytestmark = pytest.mark.slow

ALICE = UserRef("7f9c1a52-0000-4000-8000-000000000001", "Alice Ünïcødé@example.com")
FAILURE_WINDOW = 10.0


def _sid(n: int) -> str:
    return f"0000{n:04d}-aaaa-4bbb-8ccc-000000000000"


async def _started(harness, **options):
    driver = harness.driver(**options)
    progress: list[tuple[str, str]] = []
    statuses: list[tuple[str, str, str]] = []
    driver.set_progress_listener(lambda sid, msg: progress.append((sid, msg)))
    driver.set_status_listener(lambda *a: statuses.append(a))
    await driver.start()
    driver.progress, driver.statuses = progress, statuses
    return driver


def within(d: defer.Deferred, seconds: float = 20.0) -> defer.Deferred:
    """A start that hangs fails the test after `seconds` instead of hanging the suite."""
    return d.addTimeout(seconds, reactor)


def _of(harness, plural: str, session_id: str) -> list[dict]:
    return [o for o in harness.fake.objects(plural) if k8s.session_of(o) == session_id]


async def _banner(driver, session_id: str) -> bytes:
    endpoint = await driver.vnc_endpoint(session_id)
    return await read_rfb_banner(reactor, endpoint, timeout=5)


@pytest_twisted.ensureDeferred
async def test_lifecycle_through_port_forward(harness):
    driver = await _started(harness, agent_id="agent-pf")
    sid = _sid(1)
    await driver.start_session(sid, harness.template(), ALICE, "my desktop")
    assert driver.list_sessions()[0].to_json() == {"session_id": sid, "state": "running"}
    assert driver.usage().to_json() == {"sessions": 1, "cpu": 0.5, "memory_gb": 0.25}
    # the VNC server inside "the pod" answers through the API server's port-forward
    assert (await _banner(driver, sid)).startswith(b"RFB 003.")
    assert any(r[3] == "pods/portforward" for r in harness.fake.requests)
    # objects: valid names, the session's labels, least privilege in the pod
    [dep] = _of(harness, "deployments", sid)
    [svc] = _of(harness, "services", sid)
    name = dep["metadata"]["name"]
    assert names.DNS1123_LABEL.match(name) and len(name) <= 47 and name == svc["metadata"]["name"]
    labels = dep["metadata"]["labels"]
    assert labels[k8s.MANAGED_BY] == "streamspace" and labels[k8s.AGENT] == "agent-pf"
    assert labels[k8s.USER] == ALICE.id and labels[k8s.TEMPLATE] == "xvnc-desktop"
    assert dep["metadata"]["annotations"][k8s.A_USERNAME] == ALICE.username
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    container = pod_spec["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert container["readinessProbe"]["tcpSocket"]["port"] == "vnc"
    assert svc["spec"]["ports"][0]["port"] == 5901  # the template's port, not a constant
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STREAMSPACE_TEST"] == "yes" and env["STREAMSPACE_SESSION_ID"] == sid
    # progress reached the listener in the order it happened
    messages = [m for s, m in driver.progress if s == sid]
    assert any(m.startswith("scheduled on node fake-node-1") for m in messages), messages
    assert any(f'pulling image "{IMAGE}"' in m for m in messages), messages
    assert messages.index(next(m for m in messages if m.startswith("scheduled"))) < \
        messages.index(next(m for m in messages if "pulling" in m))
    # hibernate: replicas 0, pods gone, Service kept, no VNC
    await driver.hibernate_session(sid)
    assert _of(harness, "deployments", sid)[0]["spec"]["replicas"] == 0
    assert not _of(harness, "pods", sid) and _of(harness, "services", sid)
    assert driver.list_sessions()[0].state == "hibernated"
    assert driver.usage().sessions == 0
    with pytest.raises(DriverError, match="not running"):
        await driver.vnc_endpoint(sid)
    # wake: ready again, VNC again
    await driver.wake_session(sid, harness.template(), None)
    assert driver.list_sessions()[0].state == "running"
    assert (await _banner(driver, sid)).startswith(b"RFB 003.")
    # stop: Deployment and Service gone; pods follow
    await driver.stop_session(sid)
    assert not _of(harness, "deployments", sid) and not _of(harness, "services", sid)
    assert driver.list_sessions() == []
    await until(lambda: not _of(harness, "pods", sid), what="the pods to be deleted")
    await driver.stop_session(sid)  # already gone: still a success
    assert driver.statuses == []


@pytest_twisted.ensureDeferred
async def test_service_mode_reaches_vnc_through_the_cluster_ip(harness):
    driver = await _started(harness, agent_id="agent-svc", vnc_mode="service")
    sid = _sid(2)
    await driver.start_session(sid, harness.template(), ALICE, "")
    [svc] = _of(harness, "services", sid)
    endpoint = await driver.vnc_endpoint(sid)
    assert endpoint._hostText == svc["spec"]["clusterIP"]  # TCP to the Service, not a pod
    forwards_before = sum(1 for r in harness.fake.requests if r[3] == "pods/portforward")
    assert (await _banner(driver, sid)).startswith(b"RFB 003.")
    assert sum(1 for r in harness.fake.requests if r[3] == "pods/portforward") == \
        forwards_before
    await driver.stop_session(sid)


@pytest_twisted.ensureDeferred
async def test_persistent_home_is_created_first_shared_and_kept_unless_purged(harness):
    driver = await _started(harness, agent_id="agent-home", home_size="2Gi",
                            storage_class="fast")
    template = harness.template(persistent_home=True)
    first, second = _sid(3), _sid(4)
    mark = len(harness.fake.requests)
    await driver.start_session(first, template, ALICE, "")
    creates = [r[3] for r in harness.fake.requests[mark:] if r[1] == "create"]
    assert creates.index("persistentvolumeclaims") < creates.index("deployments")
    claim = names.home_claim_name(ALICE.id, ALICE.username, "xvnc-desktop")
    [pvc] = [c for c in harness.fake.objects("persistentvolumeclaims")
             if c["metadata"]["name"] == claim]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    volumes = _of(harness, "deployments", first)[0]["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim
    await driver.stop_session(first)
    assert [c["metadata"]["name"] for c in harness.fake.objects("persistentvolumeclaims")
            ].count(claim) == 1  # kept for the next session
    await driver.start_session(second, template, ALICE, "")  # AlreadyExists is success
    await driver.stop_session(second, purge=True)
    assert claim not in [c["metadata"]["name"]
                         for c in harness.fake.objects("persistentvolumeclaims")]


async def _fails_within(driver, sid: str, template, match: str) -> str:
    started = reactor.seconds()
    with pytest.raises(DriverError) as caught:
        await within(driver.start_session(sid, template, ALICE, ""), FAILURE_WINDOW)
    assert reactor.seconds() - started < FAILURE_WINDOW
    assert match in str(caught.value), str(caught.value)
    return str(caught.value)


@pytest_twisted.ensureDeferred
async def test_each_failure_kind_is_reported_with_its_reason_and_cleaned_up(harness):
    driver = await _started(harness, agent_id="agent-fail")
    fake = harness.fake
    bad_image = "registry.example.com/nope/missing:404"
    fake.pull_failures[bad_image] = (f'failed to resolve reference "{bad_image}": '
                                     f"{bad_image}: not found")
    reason = await _fails_within(driver, _sid(10), harness.template(
        kubernetes={"image": bad_image}), f"the image {bad_image} cannot be pulled")
    assert "not found" in reason  # the registry's own message
    reason = await _fails_within(driver, _sid(11), harness.template(cpu=64),
                                 "no node can run the session: 0/1 nodes are available")
    assert "Insufficient cpu" in reason
    reason = await _fails_within(driver, _sid(12), harness.template(
        kubernetes={"node_selector": {"gpu": "a100"}}), "no node can run the session")
    assert "didn't match Pod's node affinity/selector" in reason
    crasher = "registry.example.com/streamspace/crashes:1"
    fake.crash_images.add(crasher)
    reason = await _fails_within(driver, _sid(13), harness.template(
        kubernetes={"image": crasher}), "keeps crashing")
    assert "exit code 1" in reason and "back-off" in reason
    root = "registry.example.com/streamspace/runs-as-root:1"
    fake.root_images.add(root)
    await _fails_within(driver, _sid(14), harness.template(kubernetes={"image": root}),
                        "runAsNonRoot")
    fake.quota["pods"] = len([p for p in fake.objects("pods")
                              if not p["metadata"].get("deletionTimestamp")])
    try:
        reason = await _fails_within(driver, _sid(15), harness.template(),
                                     "the cluster refused to create the session's pod")
        assert "exceeded quota" in reason
    finally:
        del fake.quota["pods"]
    fake.deny[("create", "deployments")] = (
        403, "Forbidden", 'admission webhook "policy.example.com" denied the request: '
        "images must come from the internal registry")
    try:
        await _fails_within(driver, _sid(16), harness.template(),
                            "denied the request: images must come from the internal registry")
    finally:
        del fake.deny[("create", "deployments")]
    fake.deny[("create", "services")] = (422, "Invalid", 'Service "x" is invalid: '
                                         "spec.ports[0].port: Invalid value: 5901")
    try:
        await _fails_within(driver, _sid(17), harness.template(), "is invalid")
    finally:
        del fake.deny[("create", "services")]
    fake.quota["requests.storage"] = "1Gi"
    try:
        await _fails_within(driver, _sid(18), harness.template(persistent_home=True),
                            "exceeded quota")
    finally:
        del fake.quota["requests.storage"]
    # nothing of the failed starts is left running
    for n in range(10, 19):
        assert not _of(harness, "deployments", _sid(n)), n
        assert not _of(harness, "services", _sid(n)), n
    assert driver.list_sessions() == []


@pytest_twisted.ensureDeferred
async def test_refusals_before_anything_is_created(harness):
    driver = await _started(harness, agent_id="agent-refuse",
                            capacity=Capacity(max_sessions=1))
    with pytest.raises(DriverError, match="platforms.kubernetes.image"):
        await driver.start_session(_sid(20), harness.template(
            platforms={"local": {"command": "xterm"}}), ALICE, "")
    first = driver.start_session(_sid(21), harness.template(), ALICE, "")
    with pytest.raises(CapacityError, match="MAX_SESSIONS"):  # the first is not in the
        await driver.start_session(_sid(22), harness.template(), ALICE, "")  # cache yet
    await within(first)
    with pytest.raises(CapacityError, match="MAX_SESSIONS"):
        await driver.start_session(_sid(22), harness.template(), ALICE, "")
    await driver.start_session(_sid(21), harness.template(), ALICE, "")  # redelivered: ok
    assert not _of(harness, "deployments", _sid(22))
    with pytest.raises(DriverError, match="not running"):
        await driver.hibernate_session(_sid(23))
    await driver.stop_session(_sid(21))


@pytest_twisted.ensureDeferred
async def test_a_cancelled_start_leaves_nothing_running(harness):
    driver = await _started(harness, agent_id="agent-cancel")
    sid = _sid(30)
    # an image nothing listens in: the pod runs but never becomes ready
    d = driver.start_session(sid, harness.template(
        kubernetes={"image": "registry.example.com/silent:1"}), ALICE, "")
    await until(lambda: _of(harness, "pods", sid), what="the pod to exist")
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    assert not _of(harness, "deployments", sid) and not _of(harness, "services", sid)


@pytest_twisted.ensureDeferred
async def test_a_watch_410_mid_start_does_not_lose_the_start(harness):
    driver = await _started(harness, agent_id="agent-410")
    sid = _sid(40)
    lists_before = driver.pods.lists
    d = driver.start_session(sid, harness.template(), ALICE, "")
    await until(lambda: _of(harness, "pods", sid), what="the pod to exist")
    # the apiserver compacts and ends the open watches with an in-stream 410 Expired
    assert harness.fake.expire_watches("pods") >= 1
    harness.fake.expire_watches("deployments")
    await within(d)
    assert driver.pods.lists > lists_before  # it re-listed instead of resuming
    assert driver.list_sessions()[0].state == "running"
    # an HTTP 410 on the watch request itself also means re-list
    harness.fake.gone_http["services"] = 1
    harness.fake.expire_watches("services")
    await until(lambda: driver.services.lists >= 2, what="a services re-list")
    await driver.stop_session(sid)


@pytest_twisted.ensureDeferred
async def test_a_silent_watch_is_restarted(harness):
    def pod_streams():
        return sum(1 for s in harness.fake.streams if s.res.plural == "pods")

    before = pod_streams()
    driver = await _started(harness, agent_id="agent-quiet", watch_timeout=1,
                            silence_grace=0.5)
    await until(lambda: pod_streams() > before, what="the driver's pods watch to open")
    watches = driver.pods.watches
    harness.fake.silence("pods")  # the open pods watches now hang: no data, no end
    sid = _sid(50)
    await within(driver.start_session(sid, harness.template(), ALICE, ""))
    assert driver.pods.watches > watches
    await driver.stop_session(sid)


@pytest_twisted.ensureDeferred
async def test_a_restarted_driver_finds_its_sessions_and_only_its_own(harness):
    first = await _started(harness, agent_id="agent-restart")
    other = await _started(harness, agent_id="agent-other")
    sid, foreign = _sid(60), _sid(61)
    await first.start_session(sid, harness.template(), ALICE, "")
    await other.start_session(foreign, harness.template(), ALICE, "")
    stopped = await first.shutdown()
    assert stopped == [] and first.outlives_agent
    assert _of(harness, "deployments", sid)  # the session kept running
    again = await _started(harness, agent_id="agent-restart")
    assert [s.to_json() for s in again.list_sessions()] == [
        {"session_id": sid, "state": "running"}]
    assert (await _banner(again, sid)).startswith(b"RFB 003.")
    await again.stop_session(sid)
    await other.stop_session(foreign)


@pytest_twisted.ensureDeferred
async def test_a_running_session_that_dies_is_reported_once_and_removed(harness):
    driver = await _started(harness, agent_id="agent-dies")
    sid = _sid(70)
    crasher = "registry.example.com/streamspace/crashes-later:1"
    harness.fake.serve(crasher, 5901, "127.0.0.1", harness.backend.port)
    await driver.start_session(sid, harness.template(kubernetes={"image": crasher}),
                               ALICE, "")
    harness.fake.crash_images.add(crasher)
    [pod] = _of(harness, "pods", sid)
    harness.fake.controllers.delete_pod(NAMESPACE, pod["metadata"]["name"])  # evicted
    await until(lambda: driver.statuses, what="a session_status report")
    [(reported, state, reason)] = driver.statuses
    assert (reported, state) == (sid, "failed") and "keeps crashing" in reason
    await until(lambda: not _of(harness, "deployments", sid), what="the failed session "
                "to be removed")


@pytest_twisted.ensureDeferred
async def test_an_interrupted_start_is_adopted_and_orphans_are_collected(harness):
    driver = await _started(harness, agent_id="agent-orphans", orphan_grace=1.0)
    spec_template = harness.template()
    # a Service an interrupted start left behind: the next start adopts it (409 -> get)
    adopted = _sid(80)
    svc = k8s.service(session_spec(adopted, spec_template, ALICE), NAMESPACE,
                      "agent-orphans")
    await driver.client.create(f"/api/v1/namespaces/{NAMESPACE}/services", svc)
    await driver.start_session(adopted, spec_template, ALICE, "")
    assert ("", "services", "get") in harness.fake.verbs_used(AGENT_USER)
    # a Service no Deployment explains is removed after the grace period
    orphan = _sid(81)
    svc = k8s.service(session_spec(orphan, spec_template, ALICE), NAMESPACE,
                      "agent-orphans")
    await driver.client.create(f"/api/v1/namespaces/{NAMESPACE}/services", svc)
    await until(lambda: not _of(harness, "services", orphan), timeout=10,
                what="the orphaned Service to be removed")
    assert _of(harness, "services", adopted)  # a live session's Service is not touched
    await driver.stop_session(adopted)


class _Flood:
    """A server that writes as fast as its socket lets it (a streaming producer, as a VNC
    server pushing frames), up to `limit` bytes per connection; `written` is what the
    busiest connection managed to write (readiness probes open short ones too)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_connection: list[int] = []
        self.factory = self._factory()

    @property
    def written(self) -> int:
        return max(self.per_connection, default=0)

    def _factory(self):
        from twisted.internet import protocol
        from twisted.internet.interfaces import IPushProducer
        from zope.interface import implementer

        flood = self

        @implementer(IPushProducer)
        class Writer(protocol.Protocol):
            paused = False

            def connectionMade(self):
                import socket

                # fixed, small kernel buffers: the bound is reached fast and stays put
                self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
                self.index = len(flood.per_connection)
                flood.per_connection.append(0)
                self.transport.registerProducer(self, True)
                self.resumeProducing()

            def pauseProducing(self):
                self.paused = True

            def resumeProducing(self):
                self.paused = False
                chunk = b"x" * 65536
                while not self.paused and flood.per_connection[self.index] < flood.limit:
                    self.transport.write(chunk)
                    flood.per_connection[self.index] += len(chunk)

            def stopProducing(self):
                self.paused = True

        return protocol.Factory.forProtocol(Writer)


@pytest_twisted.ensureDeferred
async def test_port_forward_backpressure_keeps_buffers_bounded(harness):
    """A viewer that stops reading: the port-forward transport stops reading its WebSocket,
    the API server's side stops reading the pod, the pod's server stops writing. Without
    that, all 64 MiB would be read into the agent's memory."""
    from twisted.internet import protocol

    from agent.platforms.kubernetes.portforward import PortForwardEndpoint
    from tests.support.polling import settle

    flood = _Flood(64 << 20)
    listener = reactor.listenTCP(0, flood.factory, interface="127.0.0.1")
    image = "registry.example.com/flood:1"
    harness.fake.serve(image, 5901, "127.0.0.1", listener.getHost().port)
    driver = await _started(harness, agent_id="agent-flood")
    spec = session_spec(
        _sid(90), harness.template(kubernetes={"image": image}), ALICE)
    fake = harness.fake
    fake.store.create(fake.DEPLOYMENTS, NAMESPACE, fake.defaults(
        fake.DEPLOYMENTS, k8s.deployment(spec, NAMESPACE, "agent-flood")))
    pod = await until(lambda: next((p for p in _of(harness, "pods", _sid(90))
                                    if (p["status"].get("containerStatuses") or [{}])[0]
                                    .get("ready")), None), what="the flood pod to be ready")
    received = []

    class Stalled(protocol.Protocol):
        def connectionMade(self):
            self.transport.pauseProducing()  # the viewer stops reading at once

        def dataReceived(self, data):
            received.append(len(data))

    endpoint = PortForwardEndpoint(reactor, driver.access, NAMESPACE,
                                   pod["metadata"]["name"], 5901)
    proto = await endpoint.connect(protocol.Factory.forProtocol(Stalled))
    try:
        await until(lambda: flood.written > 0, what="the flood to start")
        written = await settle(lambda: flood.written, quiet=0.5, timeout=20)
        pending = sum(len(b) for b in proto.transport._pending)
        assert written < 4 << 20, written  # socket buffers, not the whole flood
        assert sum(received) == 0 and pending < 1 << 20, (sum(received), pending)
        proto.transport.resumeProducing()  # and it flows again when the viewer reads
        await until(lambda: sum(received) > written // 2, what="bytes to flow again")
    finally:
        proto.transport.abortConnection()
        await listener.stopListening()
        await driver.client.delete(
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{spec.object_name}")
