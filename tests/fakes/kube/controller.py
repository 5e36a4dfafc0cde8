"""What the control plane's controllers, the scheduler, the kubelet and kube-proxy do, in
small: enough for a Deployment to become a ready pod behind a Service, or to fail the
way real clusters fail.

- Deployment controller (the ReplicaSet step folded in): keeps `spec.replicas` pods
  named `<deployment>-<template hash>-<5 chars>` with the template's labels plus
  `pod-template-hash` and an ownerReference; scales down by graceful deletion; writes
  `status` (replicas, readyReplicas, availableReplicas, updatedReplicas,
  observedGeneration, Available/Progressing conditions) as `kubectl rollout status`
  reads it. Pods over a `pods` quota are refused: the Deployment gets the
  `ReplicaFailure` condition (reason FailedCreate, the quota message) and a FailedCreate
  Event, as the ReplicaSet controller reports it.
- Scheduler: one or more fake nodes with labels and allocatable cpu/memory; a pod whose
  requests do not fit or whose nodeSelector matches no node gets PodScheduled False
  reason Unschedulable with the real message shape ("0/1 nodes are available: 1
  Insufficient cpu. preemption: ...") and a FailedScheduling Event; otherwise Scheduled.
- Kubelet: Pulling -> Pulled (or ErrImagePull with the registry's message, then
  ImagePullBackOff), Created, Started; runAsNonRoot against a root image ->
  CreateContainerConfigError; a crashing image -> terminated (exit 1) then
  CrashLoopBackOff; the readiness probe is a real TCP connect to the pod's backend (the
  real Xvnc a test started for the image); graceful deletion (deletionTimestamp, then gone).
- kube-proxy: each Service gets a clusterIP on loopback (127.x.y.z) and a real TCP
  listener on clusterIP:port that forwards to a ready pod's backend, so "the Service" is
  reachable from the test machine like it is from inside a cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger

from tests.fakes.kube.store import Resource, now_iso

if TYPE_CHECKING:
    from tests.fakes.kube.server import FakeKube

log = Logger()


@dataclass
class Timings:
    """Controller delays in seconds (fast, so tests are quick; order as in real life)."""

    schedule: float = 0.05
    pull: float = 0.1
    start: float = 0.05
    probe: float = 0.1
    crash: float = 0.3
    backoff: float = 0.3
    delete_grace: float = 0.1


def parse_cpu(text: str) -> float:
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10 ** 3,
          "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12}


def parse_bytes(text: str) -> int:
    text = str(text)
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * _UNITS[unit])
    return int(float(text))


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(c for c in digest if c in "bcdfghjklmnpqrstvwxz2456789")[:10]


class Controllers:
    def __init__(self, fake: FakeKube, timings: Timings) -> None:
        self.fake, self.t = fake, timings
        self.reactor = fake.reactor
        self.proxies: dict[tuple[str, str], Any] = {}
        self.next_pod_ip = 10
        self._pending: set[tuple[str, str]] = set()
        self._calls: list = []

    # -- plumbing --------------------------------------------------------------------------

    def later(self, delay: float, fn, *args) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self.reactor.callLater(delay, self._guarded, fn, *args))

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.failure("fake controller step failed")

    def stop(self) -> defer.Deferred:
        for call in self._calls:
            if call.active():
                call.cancel()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening)
                                    for p in self.proxies.values()], consumeErrors=True)

    def on_change(self, res: Resource, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        ns = meta["namespace"]
        if res.kind == "Deployment" and kind != "DELETED":
            key = (ns, meta["name"])
            if key not in self._pending:
                self._pending.add(key)
                self.later(0, self._reconcile_deployment, ns, meta["name"])
        elif res.kind == "Deployment" and kind == "DELETED":
            for pod in self._pods_of(ns, meta["uid"]):
                self.delete_pod(ns, pod["metadata"]["name"])
        elif res.kind == "Pod":
            for owner in meta.get("ownerReferences") or []:
                self._touch_deployment(ns, owner.get("name", "").rsplit("-", 1)[0])
            if kind == "DELETED":
                self._reschedule(ns)
        elif res.kind == "Service" and kind == "ADDED":
            self._open_proxy(obj)
        elif res.kind == "Service" and kind == "DELETED":
            listener = self.proxies.pop((ns, meta["name"]), None)
            if listener is not None:
                listener.stopListening()

    def _touch_deployment(self, ns: str, name: str) -> None:
        if self.fake.store.get(self.fake.DEPLOYMENTS, ns, name) and (ns, name) not in \
                self._pending:
            self._pending.add((ns, name))
            self.later(0, self._reconcile_deployment, ns, name)

    # -- deployments -----------------------------------------------------------------------

    def _pods_of(self, ns: str, owner_uid: str) -> list[dict[str, Any]]:
        return [p for p in self.fake.store.items(self.fake.PODS, ns)
                if any(o.get("uid") == owner_uid
                       for o in p["metadata"].get("ownerReferences") or [])]

    def _reconcile_deployment(self, ns: str, name: str) -> None:
        self._pending.discard((ns, name))
        dep = self.fake.store.get(self.fake.DEPLOYMENTS, ns, name)
        if dep is None:
            return
        want = int(dep["spec"].get("replicas", 1))
        h = template_hash(dep["spec"]["template"])
        pods = [p for p in self._pods_of(ns, dep["metadata"]["uid"])
                if not p["metadata"].get("deletionTimestamp")]
        failure = None
        for pod in pods[want:]:
            self.delete_pod(ns, pod["metadata"]["name"])
        for _ in range(want - len(pods)):
            pod_name = f"{name}-{h}-{self.fake.random_suffix()}"
            refused = self.fake.pod_quota_refusal(ns, pod_name)
            if refused:
                failure = refused
                self.fake.event(ns, {"kind": "ReplicaSet", "name": f"{name}-{h}",
                                     "namespace": ns, "apiVersion": "apps/v1"},
                                "Warning", "FailedCreate", f"Error creating: {refused}",
                                "replicaset-controller")
                break
            self._create_pod(dep, pod_name, h)
        self._write_status(ns, name, failure)

    def _create_pod(self, dep: dict[str, Any], pod_name: str, h: str) -> None:
        ns = dep["metadata"]["namespace"]
        template = copy.deepcopy(dep["spec"]["template"])
        meta = template.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        labels["pod-template-hash"] = h
        annotations = dict(meta.get("annotations") or {})
        # (the ReplicaSet step is folded in: the owner is the Deployment's uid)
        pod = {"metadata": {"name": pod_name, "labels": labels, "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "apps/v1",
                                                 "kind": "ReplicaSet",
                                                 "name": f"{dep['metadata']['name']}-{h}",
                                                 "uid": dep["metadata"]["uid"],
                                                 "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": template["spec"],
               "status": {"phase": "Pending", "qosClass": "Guaranteed", "conditions": []}}
        self.fake.store.create(self.fake.PODS, ns, pod)
        self.later(self.t.schedule, self._schedule, ns, pod_name)

    def _write_status(self, ns: str, name: str, failure: str | None) -> None:
        dep = self.fake.store.get(self.fake.DEPLOYMENTS, ns, name)
        if dep is None:
            return
        pods = [p for p in self._pods_of(ns, dep["metadata"]["uid"])
                if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in pods if _condition(p, "Ready") == "True")
        want = int(dep["spec"].get("replicas", 1))
        conditions = []
        stamp = now_iso()
        conditions.append({"type": "Available", "status": "True" if ready >= want else "False",
                           "reason": "MinimumReplicasAvailable" if ready >= want
                           else "MinimumReplicasUnavailable",
                           "message": "Deployment has minimum availability." if ready >= want
                           else "Deployment does not have minimum availability.",
                           "lastUpdateTime": stamp, "lastTransitionTime": stamp})
        conditions.append({"type": "Progressing", "status": "True",
                           "reason": "NewReplicaSetAvailable" if ready >= want
                           else "ReplicaSetUpdated",
                           "message": f'ReplicaSet "{name}" is progressing.',
                           "lastUpdateTime": stamp, "lastTransitionTime": stamp})
        if failure:
            conditions.append({"type": "ReplicaFailure", "status": "True",
                               "reason": "FailedCreate", "message": failure,
                               "lastUpdateTime": stamp, "lastTransitionTime": stamp})
        new_status = {"observedGeneration": dep["metadata"].get("generation", 1),
                      "replicas": len(pods), "updatedReplicas": len(pods),
                      "readyReplicas": ready, "availableReplicas": ready,
                      "conditions": conditions}
        if ready < len(pods):
            new_status["unavailableReplicas"] = len(pods) - ready
        old = dict(dep.get("status") or {})
        if _strip_times(old) != _strip_times(new_status):
            dep["status"] = new_status
            self.fake.store.update(self.fake.DEPLOYMENTS, ns, dep)

    # -- scheduler -------------------------------------------------------------------------

    def _requests(self, pod: dict[str, Any]) -> tuple[float, int]:
        cpu, mem = 0.0, 0
        for c in pod["spec"].get("containers") or []:
            req = (c.get("resources") or {}).get("requests") or {}
            cpu += parse_cpu(req.get("cpu", "0"))
            mem += parse_bytes(req.get("memory", "0"))
        return cpu, mem

    def _schedule(self, ns: str, pod_name: str) -> None:
        pod = self.fake.store.get(self.fake.PODS, ns, pod_name)
        if pod is None or pod["metadata"].get("deletionTimestamp") or \
                pod["spec"].get("nodeName"):
            return
        cpu, mem = self._requests(pod)
        selector = pod["spec"].get("nodeSelector") or {}
        reasons: dict[str, int] = {}
        chosen = None
        for node in self.fake.nodes:
            if any(node["labels"].get(k) != v for k, v in selector.items()):
                reasons["node(s) didn't match Pod's node affinity/selector"] = \
                    reasons.get("node(s) didn't match Pod's node affinity/selector", 0) + 1
                continue
            used_cpu, used_mem = self._node_usage(node["name"])
            if used_cpu + cpu > node["cpu"] + 1e-9:
                reasons["Insufficient cpu"] = reasons.get("Insufficient cpu", 0) + 1
                continue
            if used_mem + mem > node["memory"]:
                reasons["Insufficient memory"] = reasons.get("Insufficient memory", 0) + 1
                continue
            chosen = node
            break
        if chosen is None:
            n = len(self.fake.nodes)
            detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
            message = (f"0/{n} nodes are available: {detail}. preemption: 0/{n} nodes are "
                       f"available: {n} No preemption victims found for incoming pod.")
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                            "reason": "Unschedulable", "message": message,
                                            "lastTransitionTime": now_iso()}]
            self.fake.store.update(self.fake.PODS, ns, pod)
            self.fake.event(ns, _ref(pod), "Warning", "FailedScheduling", message,
                            "default-scheduler")
            return
        pod["spec"]["nodeName"] = chosen["name"]
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True",
                                        "lastTransitionTime": now_iso()}]
        self.fake.store.update(self.fake.PODS, ns, pod)
        self.fake.event(ns, _ref(pod), "Normal", "Scheduled",
                        f"Successfully assigned {ns}/{pod_name} to {chosen['name']}",
                        "default-scheduler")
        self.later(self.t.pull, self._pull, ns, pod_name)

    def _node_usage(self, node: str) -> tuple[float, int]:
        cpu, mem = 0.0, 0
        for pod in self.fake.store.items(self.fake.PODS):
            if pod["spec"].get("nodeName") == node:
                c, m = self._requests(pod)
                cpu, mem = cpu + c, mem + m
        return cpu, mem

    def _reschedule(self, ns: str) -> None:
        for pod in self.fake.store.items(self.fake.PODS, ns):
            if not pod["spec"].get("nodeName") and not pod["metadata"].get(
                    "deletionTimestamp"):
                self.later(self.t.schedule, self._schedule, ns, pod["metadata"]["name"])

    # -- kubelet ---------------------------------------------------------------------------

    def _live(self, ns: str, pod_name: str) -> dict[str, Any] | None:
        pod = self.fake.store.get(self.fake.PODS, ns, pod_name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        return pod

    def _container(self, pod: dict[str, Any]) -> dict[str, Any]:
        return pod["spec"]["containers"][0]

    def _set_container(self, pod: dict[str, Any], state: dict[str, Any], ready: bool,
                       **extra: Any) -> None:
        c = self._container(pod)
        old = (pod["status"].get("containerStatuses") or [{}])[0]
        entry = {"name": c["name"], "image": c["image"], "imageID": "",
                 "ready": ready, "started": "running" in state,
                 "restartCount": old.get("restartCount", 0), "state": state}
        if old.get("lastState"):
            entry["lastState"] = old["lastState"]
        entry.update(extra)
        pod["status"]["containerStatuses"] = [entry]

    def _pull(self, ns: str, pod_name: str) -> None:
        pod = self._live(ns, pod_name)
        if pod is None:
            return
        image = self._container(pod)["image"]
        ref = _ref(pod, _field(self._container(pod)))
        node = pod["spec"]["nodeName"]
        self.fake.event(ns, ref, "Normal", "Pulling", f'Pulling image "{image}"', "kubelet",
                        node)
        failure = self.fake.pull_failures.get(image)
        if failure is not None:
            detail = (f'rpc error: code = NotFound desc = failed to pull and unpack image '
                      f'"{image}": {failure}')
            self._set_container(pod, {"waiting": {"reason": "ErrImagePull",
                                                  "message": detail}}, False)
            pod["status"]["phase"] = "Pending"
            self.fake.store.update(self.fake.PODS, ns, pod)
            self.fake.event(ns, ref, "Warning", "Failed",
                            f'Failed to pull image "{image}": {detail}', "kubelet", node)
            self.fake.event(ns, ref, "Warning", "Failed", "Error: ErrImagePull", "kubelet",
                            node)
            self.later(self.t.backoff, self._pull_backoff, ns, pod_name)
            return
        self.fake.event(ns, ref, "Normal", "Pulled",
                        f'Successfully pulled image "{image}" in 104ms (104ms including '
                        f'waiting). Image size: 52428800 bytes.', "kubelet", node)
        self.later(self.t.start, self._start_container, ns, pod_name)

    def _pull_backoff(self, ns: str, pod_name: str) -> None:
        pod = self._live(ns, pod_name)
        if pod is None:
            return
        image = self._container(pod)["image"]
        self._set_container(pod, {"waiting": {"reason": "ImagePullBackOff",
                                              "message": f'Back-off pulling image "{image}"'}},
                            False)
        self.fake.store.update(self.fake.PODS, ns, pod)
        self.fake.event(ns, _ref(pod), "Normal", "BackOff",
                        f'Back-off pulling image "{image}"', "kubelet",
                        pod["spec"]["nodeName"])

    def _start_container(self, ns: str, pod_name: str) -> None:
        pod = self._live(ns, pod_name)
        if pod is None:
            return
        c = self._container(pod)
        node = pod["spec"]["nodeName"]
        ref = _ref(pod, _field(c))
        non_root = (pod["spec"].get("securityContext") or {}).get("runAsNonRoot")
        if non_root and c["image"] in self.fake.root_images and not (
                pod["spec"].get("securityContext") or {}).get("runAsUser"):
            message = (f"container has runAsNonRoot and image will run as root (pod: "
                       f'"{pod_name}_{ns}({pod["metadata"]["uid"]})", container: {c["name"]})')
            self._set_container(pod, {"waiting": {"reason": "CreateContainerConfigError",
                                                  "message": message}}, False)
            self.fake.store.update(self.fake.PODS, ns, pod)
            self.fake.event(ns, ref, "Warning", "Failed", f"Error: {message}", "kubelet", node)
            return
        self.fake.event(ns, ref, "Normal", "Created", f"Created container: {c['name']}",
                        "kubelet", node)
        self.fake.event(ns, ref, "Normal", "Started", f"Started container {c['name']}",
                        "kubelet", node)
        self._set_container(pod, {"running": {"startedAt": now_iso()}}, False)
        pod["status"].update({"phase": "Running", "podIP": self._pod_ip(),
                              "hostIP": "127.0.0.1", "startTime": now_iso()})
        pod["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "False"},
            {"type": "Ready", "status": "False"}]
        self.fake.store.update(self.fake.PODS, ns, pod)
        if c["image"] in self.fake.crash_images:
            self.later(self.t.crash, self.crash, ns, pod_name)
        else:
            self.later(self.t.probe, self._probe, ns, pod_name)

    def _pod_ip(self) -> str:
        self.next_pod_ip += 1
        return f"10.244.{self.next_pod_ip // 250}.{self.next_pod_ip % 250 + 2}"

    def crash(self, ns: str, pod_name: str) -> None:
        pod = self._live(ns, pod_name)
        if pod is None:
            return
        c = self._container(pod)
        restarts = ((pod["status"].get("containerStatuses") or [{}])[0]
                    .get("restartCount", 0)) + 1
        last = {"terminated": {"exitCode": 1, "reason": "Error",
                               "message": "Xvnc: fatal error: cannot open display",
                               "startedAt": now_iso(), "finishedAt": now_iso()}}
        self._set_container(
            pod, {"waiting": {"reason": "CrashLoopBackOff",
                              "message": f"back-off 10s restarting failed container="
                                         f"{c['name']} pod={pod_name}_{ns}"
                                         f"({pod['metadata']['uid']})"}},
            False, restartCount=restarts, lastState=last)
        pod["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "True"}, {"type": "Initialized",
                                                          "status": "True"},
            {"type": "ContainersReady", "status": "False"}, {"type": "Ready",
                                                              "status": "False"}]
        self.fake.store.update(self.fake.PODS, ns, pod)
        self.fake.event(ns, _ref(pod, _field(c)), "Warning",
                        "BackOff", f"Back-off restarting failed container {c['name']} in pod "
                        f"{pod_name}_{ns}({pod['metadata']['uid']})", "kubelet",
                        pod["spec"]["nodeName"])

    def _probe(self, ns: str, pod_name: str) -> None:
        pod = self._live(ns, pod_name)
        if pod is None:
            return
        backend = self.fake.backend_for(pod)
        d = _tcp_check(self.reactor, backend) if backend else defer.succeed(False)
        d.addCallback(self._probed, ns, pod_name)

    def _probed(self, ok: bool, ns: str, pod_name: str) -> None:
        pod = self._live(ns, pod_name)
        if pod is None:
            return
        status = (pod["status"].get("containerStatuses") or [{}])[0]
        if ok != bool(status.get("ready")):
            status["ready"] = ok
            for cond in pod["status"]["conditions"]:
                if cond["type"] in ("Ready", "ContainersReady"):
                    cond["status"] = "True" if ok else "False"
            self.fake.store.update(self.fake.PODS, ns, pod)
        self.later(self.t.probe if not ok else self.t.probe * 5, self._probe, ns, pod_name)

    def delete_pod(self, ns: str, pod_name: str) -> dict[str, Any] | None:
        pod = self.fake.store.get(self.fake.PODS, ns, pod_name)
        if pod is None:
            return None
        if not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"]["deletionTimestamp"] = now_iso()
            pod["metadata"]["deletionGracePeriodSeconds"] = 10
            pod = self.fake.store.update(self.fake.PODS, ns, pod)
            self.later(self.t.delete_grace, self._remove_pod, ns, pod_name)
        return pod

    def _remove_pod(self, ns: str, pod_name: str) -> None:
        self.fake.store.remove(self.fake.PODS, ns, pod_name)

    # -- kube-proxy ------------------------------------------------------------------------

    def _open_proxy(self, svc: dict[str, Any]) -> None:
        meta, spec = svc["metadata"], svc["spec"]
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            return
        port = int(spec["ports"][0]["port"])
        factory = protocol.Factory.forProtocol(
            lambda: _ServiceProxy(self, meta["namespace"], meta["name"]))
        factory.noisy = False
        try:
            self.proxies[(meta["namespace"], meta["name"])] = self.reactor.listenTCP(
                port, factory, interface=ip)
        except Exception as e:
            log.error("fake kube-proxy cannot listen on {ip}:{port}: {e}", ip=ip, port=port,
                      e=e)

    def service_backend(self, ns: str, name: str) -> tuple[str, int] | None:
        svc = self.fake.store.get(self.fake.SERVICES, ns, name)
        if svc is None:
            return None
        selector = svc["spec"].get("selector") or {}
        for pod in self.fake.store.items(self.fake.PODS, ns):
            labels = pod["metadata"].get("labels") or {}
            if (all(labels.get(k) == v for k, v in selector.items())
                    and _condition(pod, "Ready") == "True"
                    and not pod["metadata"].get("deletionTimestamp")):
                return self.fake.backend_for(pod)
        return None


class _ServiceProxy(protocol.Protocol):
    """One connection to a Service's clusterIP, spliced to a ready pod's backend (with
    backpressure both ways, as a TCP proxy would)."""

    def __init__(self, controllers: Controllers, ns: str, name: str) -> None:
        self.controllers, self.ns, self.name = controllers, ns, name
        self.peer: _Upstream | None = None
        self.buffer: list[bytes] = []

    def connectionMade(self) -> None:
        backend = self.controllers.service_backend(self.ns, self.name)
        if backend is None:
            self.transport.abortConnection()  # no endpoints: refused, as kube-proxy does
            return
        self.transport.pauseProducing()
        d = TCP4ClientEndpoint(self.controllers.reactor, *backend, timeout=5).connect(
            protocol.Factory.forProtocol(lambda: _Upstream(self)))
        d.addErrback(lambda _f: self.transport.abortConnection())

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()


class _Upstream(protocol.Protocol):
    def __init__(self, downstream: _ServiceProxy) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.peer = self
        self.transport.registerProducer(self.downstream.transport, True)
        self.downstream.transport.registerProducer(self.transport, True)
        self.downstream.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.downstream.transport.write(data)

    def connectionLost(self, reason) -> None:
        self.downstream.transport.loseConnection()


def _tcp_check(reactor, backend: tuple[str, int]) -> defer.Deferred:
    d = TCP4ClientEndpoint(reactor, backend[0], backend[1], timeout=1).connect(
        protocol.Factory.forProtocol(protocol.Protocol))

    def connected(proto):
        proto.transport.loseConnection()
        return True

    return d.addCallbacks(connected, lambda _f: False)


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond.get("status")
    return None


def _strip_times(status: dict[str, Any]) -> dict[str, Any]:
    copy_ = json.loads(json.dumps(status))
    for cond in copy_.get("conditions") or []:
        cond.pop("lastUpdateTime", None)
        cond.pop("lastTransitionTime", None)
    return copy_


def _ref(pod: dict[str, Any], field_path: str = "") -> dict[str, Any]:
    ref = {"kind": "Pod", "namespace": pod["metadata"]["namespace"],
           "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"],
           "apiVersion": "v1", "resourceVersion": pod["metadata"]["resourceVersion"]}
    if field_path:
        ref["fieldPath"] = field_path
    return ref


def _field(container: dict[str, Any]) -> str:
    return "spec.containers{" + container["name"] + "}"
