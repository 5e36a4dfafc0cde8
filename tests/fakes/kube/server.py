"""FakeKube: the fake Kubernetes API server a test starts (there is no cluster here).

What each part stands for (details in the modules): store.py etcd and the watch cache,
api.py the apiserver's REST surface, status.py its Status errors and validation,
controller.py the controllers, scheduler, kubelet and kube-proxy, portforward.py the
kubelet's port-forward. This file wires them and holds the knobs and the identity parts:

- TLS with a test CA (server certificate for 127.0.0.1/localhost), bearer tokens and
  client certificates (CN = user name), as the apiserver authenticates; authorization by
  RBAC-style rules per user, e.g. the agent's Role read from deploy/kubernetes/rbac.yaml;
- namespaces (creating in a missing one is 404 like the real thing);
- quota: `quota = {"pods": N, "requests.storage": "1Gi"}` (ResourceQuota admission);
- admission: `deny[(verb, plural)] = (code, reason, message)` (a webhook's refusal);
- faults: `pull_failures[image] = registry message`, `crash_images`, `crash_pod(ns, pod)`
  (a running container dies), `root_images`, `nodes` (labels, allocatable cpu/memory)
  for unschedulable pods;
- watch faults: `expire_watches(plural)` (in-stream 410 + compaction), `silence(plural)`
  (hung watches), `gone_http[plural] = n` (HTTP 410 answers);
- `serve(image, port, host, backend_port)`: the process "inside" the pods of an image;
- `requests` records (user, verb, group, resource, namespace, name) and `bodies` every
  object written, for RBAC and kubernetes-validate checks.
"""

from __future__ import annotations

import base64
import random
import string
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, ssl
from twisted.web import resource, server

from tests.fakes.kube import status
from tests.fakes.kube.api import ApiResource, WatchStream
from tests.fakes.kube.controller import Controllers, Timings, parse_bytes
from tests.fakes.kube.pki import TestPki
from tests.fakes.kube.portforward import factory as portforward_factory
from tests.fakes.kube.status import ApiStatus
from tests.fakes.kube.store import Resource, Store, now_iso

ADMIN = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]


def load_role_rules(path: Path) -> list[dict[str, Any]]:
    """The rules of the Role in a manifest file (e.g. deploy/kubernetes/rbac.yaml)."""
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if doc and doc.get("kind") == "Role":
            return doc["rules"]
    raise ValueError(f"no Role in {path}")


def _allowed(rules: list[dict[str, Any]], verb: str, group: str, resource_name: str) -> bool:
    for rule in rules:
        groups, resources, verbs = (rule.get("apiGroups") or [], rule.get("resources") or [],
                                    rule.get("verbs") or [])
        if (("*" in groups or group in groups) and ("*" in resources
                                                    or resource_name in resources)
                and ("*" in verbs or verb in verbs)):
            return True
    return False


class _Root(resource.Resource):
    def __init__(self, fake: FakeKube) -> None:
        super().__init__()
        self.api = ApiResource(fake)
        from autobahn.twisted.resource import WebSocketResource

        self.ws = WebSocketResource(portforward_factory(fake))

    def getChildWithDefault(self, path, request):
        upgrade = (request.getHeader("upgrade") or "").lower() == "websocket"
        if upgrade and request.path.decode().endswith("/portforward"):
            return self.ws
        return self.api

    def render(self, request):
        return self.api.render(request)


class FakeKube:
    PODS = Resource("v1", "pods", "Pod")
    SERVICES = Resource("v1", "services", "Service")
    CLAIMS = Resource("v1", "persistentvolumeclaims", "PersistentVolumeClaim")
    EVENTS = Resource("v1", "events", "Event")
    NAMESPACES = Resource("v1", "namespaces", "Namespace", namespaced=False)
    DEPLOYMENTS = Resource("apps/v1", "deployments", "Deployment")
    RESOURCES = (PODS, SERVICES, CLAIMS, EVENTS, NAMESPACES, DEPLOYMENTS)

    def __init__(self, reactor, directory: Path, namespaces: tuple[str, ...] = ("streamspace",),
                 timings: Timings | None = None) -> None:
        self.reactor = reactor
        self.directory = Path(directory)
        self.pki = TestPki(self.directory / "pki")
        self.store = Store()
        self.controllers = Controllers(self, timings or Timings())
        self.store.hooks.append(self.controllers.on_change)
        self.users: dict[str, list[dict[str, Any]]] = {}
        self.tokens: dict[str, str] = {}
        self.cert_users: set[str] = set()
        self.streams: list[WatchStream] = []
        self.forwards: list = []
        self.requests: list[tuple[str, str, str, str, str | None, str | None]] = []
        self.bodies: list[tuple[str, str, dict[str, Any]]] = []
        self.refusals: list[tuple[str, str, str, str, str | None, str | None]] = []
        self.quota: dict[str, Any] = {}
        self.deny: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.pull_failures: dict[str, str] = {}
        self.crash_images: set[str] = set()
        self.root_images: set[str] = set()
        self.backends: dict[tuple[str, int], tuple[str, int]] = {}
        self.nodes = [{"name": "fake-node-1", "labels": {"kubernetes.io/os": "linux",
                                                         "kubernetes.io/hostname":
                                                             "fake-node-1"},
                       "cpu": 8.0, "memory": 32 << 30}]
        self.gone_http: dict[str, int] = {}
        self.bookmark_interval: float | None = None
        # clusterIPs on loopback: 127.<a>.<b>.<n>, a block of our own per fake
        self._ip_base = (random.randint(100, 250), random.randint(1, 250))  # noqa: S311
        self._next_ip = 1
        self.port: int | None = None
        self._listener = None
        for ns in namespaces:
            self.add_namespace(ns)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeKube:
        site = server.Site(_Root(self))
        site.noisy = False
        options = ssl.CertificateOptions(
            privateKey=self.pki.server_key_obj(), certificate=self.pki.server_cert_obj(),
            verify=True, caCerts=[self.pki.ca_cert_obj()], requireCertificate=False)
        self._listener = self.reactor.listenSSL(0, site, options, interface="127.0.0.1")
        self.port = self._listener.getHost().port
        return self

    async def stop(self) -> None:
        for stream in list(self.streams):
            stream.silent = False
            stream.finish()
        for ws in list(self.forwards):
            ws.dropConnection(abort=True)
        await self.controllers.stop()
        if self._listener is not None:
            await defer.maybeDeferred(self._listener.stopListening)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- identities ------------------------------------------------------------------------

    def add_user(self, name: str, rules: list[dict[str, Any]] | None = None) -> str:
        """A user with a bearer token (returned); `rules` None means cluster-admin."""
        token = "".join(random.choices(string.ascii_letters + string.digits, k=40))  # noqa: S311
        self.users[name] = rules if rules is not None else ADMIN
        self.tokens[token] = name
        return token

    def add_cert_user(self, name: str, rules: list[dict[str, Any]] | None = None
                      ) -> tuple[Path, Path]:
        """A user who authenticates with a client certificate (CN = name)."""
        self.users[name] = rules if rules is not None else ADMIN
        self.cert_users.add(name)
        return self.pki.client(name)

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def kubeconfig(self, path: Path, *, token: str | None = None,
                   cert: tuple[Path, Path] | None = None, namespace: str = "streamspace",
                   context: str = "fake", ca_inline: bool = True) -> Path:
        cluster: dict[str, Any] = {"server": self.url}
        if ca_inline:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.pki.ca_pem).decode()
        else:
            cluster["certificate-authority"] = str(self.pki.ca_path)
        user: dict[str, Any] = {}
        if token:
            user["token"] = token
        if cert:
            user["client-certificate"], user["client-key"] = str(cert[0]), str(cert[1])
        config = {"apiVersion": "v1", "kind": "Config", "current-context": context,
                  "clusters": [{"name": "fake", "cluster": cluster}],
                  "users": [{"name": "fake-user", "user": user}],
                  "contexts": [{"name": context, "context": {
                      "cluster": "fake", "user": "fake-user", "namespace": namespace}}]}
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _user_from(self, authorization: str | None, transport) -> str:
        if authorization and authorization.lower().startswith("bearer "):
            user = self.tokens.get(authorization[7:].strip())
            if user:
                return user
            raise status.unauthorized()
        cert = getattr(transport, "getPeerCertificate", lambda: None)()
        if cert is not None:
            cn = cert.get_subject().CN
            if cn in self.cert_users:
                return cn
        raise status.unauthorized()

    def authenticate(self, request) -> str:
        return self._user_from(request.getHeader("authorization"), request.transport)

    def authorize(self, user: str, verb: str, res: Resource, namespace: str | None,
                  name: str | None, sub: str | None) -> None:
        what = res.plural + (f"/{sub}" if sub else "")
        if not _allowed(self.users.get(user, []), verb, res.group, what):
            self.refusals.append((user, verb, res.group, what, namespace, name))
            raise status.forbidden(res, name, user, verb, namespace, sub)

    def record(self, user: str, verb: str, res: Resource, namespace: str | None,
               name: str | None, sub: str | None, body: Any) -> None:
        what = res.plural + (f"/{sub}" if sub else "")
        self.requests.append((user, verb, res.group, what, namespace, name))
        if isinstance(body, dict) and verb in ("create", "update", "patch"):
            self.bodies.append((user, verb, body))

    # -- discovery -------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "fake", "gitTreeState": "clean", "buildDate": now_iso(),
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}

    def resource(self, group_version: str, plural: str | None) -> Resource | None:
        for res in self.RESOURCES:
            if res.group_version == group_version and res.plural == plural:
                return res
        return None

    def discovery(self, path: str) -> dict[str, Any] | None:
        path = path.rstrip("/")
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]}
        for gv in ("v1", "apps/v1"):
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": self._api_resources(gv)}
        return None

    def _api_resources(self, gv: str) -> list[dict[str, Any]]:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        out = []
        for res in self.RESOURCES:
            if res.group_version != gv:
                continue
            out.append({"name": res.plural, "singularName": res.kind.lower(),
                        "namespaced": res.namespaced, "kind": res.kind, "verbs": verbs,
                        "shortNames": {"deployments": ["deploy"], "services": ["svc"],
                                       "persistentvolumeclaims": ["pvc"],
                                       "pods": ["po"]}.get(res.plural, [])})
            if res.kind == "Deployment":
                out.append({"name": "deployments/scale", "singularName": "", "namespaced": True,
                            "group": "autoscaling", "version": "v1", "kind": "Scale",
                            "verbs": ["get", "patch", "update"]})
                out.append({"name": "deployments/status", "singularName": "",
                            "namespaced": True, "kind": "Deployment",
                            "verbs": ["get", "patch", "update"]})
            if res.kind == "Pod":
                out.append({"name": "pods/portforward", "singularName": "",
                            "namespaced": True, "kind": "PodPortForwardOptions",
                            "verbs": ["create", "get"]})
        return out

    # -- admission and defaults ------------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        self.store.create(self.NAMESPACES, "", {"metadata": {"name": name},
                                                "status": {"phase": "Active"}})

    def admit(self, verb: str, res: Resource, namespace: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if res.namespaced and self.store.get(self.NAMESPACES, "", namespace) is None:
            raise status.ApiStatus(404, "NotFound", f'namespaces "{namespace}" not found',
                                   {"name": namespace, "kind": "namespaces"})
        denial = self.deny.get((verb, res.plural))
        if denial is not None:
            code, reason, message = denial
            raise ApiStatus(code, reason, message)
        if res.kind == "PersistentVolumeClaim" and "requests.storage" in self.quota:
            limit = parse_bytes(self.quota["requests.storage"])
            want = obj["spec"]["resources"]["requests"]["storage"]
            used = sum(parse_bytes(c["spec"]["resources"]["requests"]["storage"])
                       for c in self.store.items(self.CLAIMS, namespace))
            if used + parse_bytes(want) > limit:
                raise ApiStatus(403, "Forbidden", f'persistentvolumeclaims "{name}" is '
                                f"forbidden: exceeded quota: streamspace-quota, requested: "
                                f"requests.storage={want}, used: requests.storage={used}, "
                                f"limited: requests.storage={self.quota['requests.storage']}")

    def pod_quota_refusal(self, namespace: str, pod_name: str) -> str | None:
        limit = self.quota.get("pods")
        if limit is None:
            return None
        used = len([p for p in self.store.items(self.PODS, namespace)
                    if not p["metadata"].get("deletionTimestamp")])
        if used + 1 > int(limit):
            return (f'pods "{pod_name}" is forbidden: exceeded quota: streamspace-quota, '
                    f"requested: pods=1, used: pods={used}, limited: pods={limit}")
        return None

    def defaults(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """What the apiserver fills in on create (the parts clients read back)."""
        spec = obj.setdefault("spec", {}) if res.kind != "Event" else {}
        if res.kind == "Service":
            spec.setdefault("type", "ClusterIP")
            a, b = self._ip_base
            ip = f"127.{a}.{b}.{self._next_ip}"
            self._next_ip += 1
            spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port["port"])
        elif res.kind == "Deployment":
            spec.setdefault("replicas", 1)
            obj["status"] = {}
        elif res.kind == "PersistentVolumeClaim":
            obj["status"] = {"phase": "Bound"}
        return obj

    # -- deletion, scale -------------------------------------------------------------------

    def delete(self, res: Resource, namespace: str, obj: dict[str, Any],
               options: dict[str, Any]) -> dict[str, Any]:
        """Pods are deleted gracefully (the object, with deletionTimestamp, comes back);
        the registries of Services, PVCs and Namespaces return the deleted object
        (ReturnDeletedObject), the others a Success Status."""
        name = obj["metadata"]["name"]
        if res.kind == "Pod":
            return self.controllers.delete_pod(namespace, name) or obj
        removed = self.store.remove(res, namespace, name)
        if res.kind in ("Service", "PersistentVolumeClaim", "Namespace"):
            return removed or obj
        return status.success(res, name, obj["metadata"]["uid"])

    def scale_of(self, dep: dict[str, Any]) -> dict[str, Any]:
        meta = dep["metadata"]
        selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"]
                            .items())
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "uid": meta["uid"], "resourceVersion": meta["resourceVersion"],
                             "creationTimestamp": meta["creationTimestamp"]},
                "spec": {"replicas": dep["spec"].get("replicas", 1)},
                "status": {"replicas": (dep.get("status") or {}).get("replicas", 0),
                           "selector": selector}}

    def random_suffix(self, n: int = 5) -> str:
        return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=n))  # noqa: S311

    # -- events, backends, port-forward ----------------------------------------------------

    def event(self, namespace: str, involved: dict[str, Any], kind: str, reason: str,
              message: str, component: str, host: str | None = None) -> None:
        stamp = now_iso()
        source = {"component": component}
        if host:
            source["host"] = host
        self.store.create(self.EVENTS, namespace, {
            "metadata": {"name": f"{involved['name']}.{self.random_suffix(16)}"},
            "involvedObject": involved, "reason": reason, "message": message,
            "source": source, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "type": kind, "eventTime": None, "reportingComponent": component,
            "reportingInstance": host or ""})

    def serve(self, image: str, port: int, host: str, backend_port: int) -> None:
        """Pods of `image` have a server on `port`: the real one at host:backend_port."""
        self.backends[(image, port)] = (host, backend_port)

    def backend_for(self, pod: dict[str, Any], port: int | None = None
                    ) -> tuple[str, int] | None:
        container = pod["spec"]["containers"][0]
        if port is None:
            ports = [p["containerPort"] for p in container.get("ports") or []]
            port = ports[0] if ports else None
        return self.backends.get((container["image"], port)) if port else None

    def portforward_target(self, ws_request, transport) -> tuple[str, int, Any]:
        """Authorize and locate a port-forward (raises ApiStatus to refuse it)."""
        auth = ws_request.headers.get("authorization")
        user = self._user_from(auth, transport)
        parts = ws_request.path.strip("/").split("/")
        # api v1 namespaces {ns} pods {pod} portforward
        if len(parts) != 7 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "pods":
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        namespace, pod_name = parts[3], parts[5]
        for verb in ("get", "create"):
            self.authorize(user, verb, self.PODS, namespace, pod_name, "portforward")
        self.record(user, "create", self.PODS, namespace, pod_name, "portforward", None)
        self.record(user, "get", self.PODS, namespace, pod_name, "portforward", None)
        pod = self.store.get(self.PODS, namespace, pod_name)
        if pod is None:
            raise status.not_found(self.PODS, pod_name)
        if (pod.get("status") or {}).get("phase") != "Running":
            raise status.bad_request(f"pod {pod_name} is not running and cannot forward "
                                     "ports")
        try:
            port = int(ws_request.params.get("ports", [""])[0].split(",")[0])
        except ValueError:
            raise status.bad_request("invalid port in the ports parameter") from None
        return f"{pod_name}_{namespace}", port, self.backend_for(pod, port)

    def crash_pod(self, namespace: str, pod_name: str) -> None:
        """The pod's container exits with an error (its program died): the kubelet puts it
        in CrashLoopBackOff, as for any container that keeps failing."""
        self.controllers.crash(namespace, pod_name)

    # -- watch knobs -----------------------------------------------------------------------

    def expire_watches(self, plural: str) -> int:
        """Compact the history and end every open watch of `plural` with an in-stream
        410: the client must re-list (resuming from its resourceVersion is refused)."""
        self.store.compact()
        ended = 0
        for stream in list(self.streams):
            if stream.res.plural == plural:
                stream.error(status.gone(f"too old resource version: "
                                         f"{self.store.oldest - 1} ({self.store.oldest})"))
                ended += 1
        return ended

    def silence(self, plural: str) -> int:
        """The open watches of `plural` hang: nothing more arrives on them, not even their
        end (a connection that died without a FIN). Later watches are not affected."""
        hung = 0
        for stream in self.streams:
            if stream.res.plural == plural:
                stream.silent = True
                hung += 1
        return hung

    # -- inspection ------------------------------------------------------------------------

    def objects(self, plural: str, namespace: str = "streamspace") -> list[dict[str, Any]]:
        res = next(r for r in self.RESOURCES if r.plural == plural)
        return self.store.items(res, namespace)

    def verbs_used(self, user: str) -> set[tuple[str, str, str]]:
        """(group, resource, verb) this user was allowed and used."""
        return {(g, r, v) for u, v, g, r, _ns, _n in self.requests if u == user}
