"""Keeps the fake API server honest: real clients drive it and get what a real cluster gives.

- the pinned `kubernetes` Python client (its own request building, response decoding
  into models, `ApiException` parsing, `watch.Watch` with resourceVersion and its 410
  handling, `kubernetes.stream.portforward` over v4.channel.k8s.io), run in a thread
  because it is synchronous;
- the real `kubectl` v1.33 binary (tests/support/k8s_binaries.py): `apply -f`, `rollout
  status`, `get -o json`, `scale`, `delete`. `--validate=false` because the fake serves no
  OpenAPI documents (what we send is validated by kubernetes-validate instead).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.fakes.kube.harness import IMAGE, NAMESPACE
from tests.support.k8s_binaries import k8s_binary

pytestmark = pytest.mark.slow


def deployment(name: str, image: str = IMAGE, replicas: int = 1) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": "main", "image": image,
                          "ports": [{"name": "vnc", "containerPort": 5901}]}]}}}}


@pytest.fixture(scope="module")
def admin(harness):
    token = harness.fake.add_user("admin")
    return harness.fake.kubeconfig(harness.directory / "admin.kubeconfig", token=token)


def _api(kubeconfig):
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def _in_thread(fn, *args):
    return threads.deferToThread(fn, *args)


@pytest_twisted.ensureDeferred
async def test_python_client_crud_and_status_errors(harness, admin):
    def scenario():
        from kubernetes import client

        api = _api(admin)
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        out = {}
        created = apps.create_namespaced_deployment(NAMESPACE, deployment("crud"))
        out["uid"] = created.metadata.uid
        out["generation"] = created.metadata.generation
        try:
            apps.create_namespaced_deployment(NAMESPACE, deployment("crud"))
        except client.ApiException as e:
            out["dup"] = (e.status, json.loads(e.body)["reason"])
        try:
            apps.read_namespaced_deployment("missing", NAMESPACE)
        except client.ApiException as e:
            out["missing"] = (e.status, json.loads(e.body)["message"])
        try:
            apps.create_namespaced_deployment(NAMESPACE, deployment("Bad_Name"))
        except client.ApiException as e:
            out["invalid"] = (e.status, json.loads(e.body)["reason"])
        listed = apps.list_namespaced_deployment(NAMESPACE, label_selector="app in (crud)")
        out["listed"] = [d.metadata.name for d in listed.items]
        out["none"] = apps.list_namespaced_deployment(
            NAMESPACE, label_selector="app=crud,app!=crud").items
        patched = apps.patch_namespaced_deployment("crud", NAMESPACE,
                                                   {"spec": {"replicas": 0}})
        out["patched"] = (patched.spec.replicas, patched.metadata.generation)
        scale = apps.read_namespaced_deployment_scale("crud", NAMESPACE)
        out["scale"] = scale.spec.replicas
        svc = core.create_namespaced_service(NAMESPACE, {
            "metadata": {"name": "crud"}, "spec": {"selector": {"app": "crud"},
                                                   "ports": [{"port": 5901}]}})
        out["cluster_ip"] = svc.spec.cluster_ip
        core.delete_namespaced_service("crud", NAMESPACE)
        deleted = apps.delete_namespaced_deployment("crud", NAMESPACE)
        out["deleted"] = deleted["status"]  # this client version types it `object`
        return out

    out = await _in_thread(scenario)
    assert out["uid"] and out["generation"] == 1
    assert out["dup"] == (409, "AlreadyExists")
    assert out["missing"] == (404, 'deployments.apps "missing" not found')
    assert out["invalid"] == (422, "Invalid")
    assert out["listed"] == ["crud"] and out["none"] == []
    assert out["patched"] == (0, 2)  # a spec change bumps the generation
    assert out["scale"] == 0
    assert out["cluster_ip"].startswith("127.")
    assert out["deleted"] == "Success"


@pytest_twisted.ensureDeferred
async def test_python_client_authentication_and_authorization(harness, admin):
    cert = harness.fake.add_cert_user("cert-admin")
    by_cert = harness.fake.kubeconfig(harness.directory / "cert.kubeconfig", cert=cert,
                                      ca_inline=False)
    bad = harness.fake.kubeconfig(harness.directory / "bad.kubeconfig", token="not-a-token")
    agent = harness.kubeconfig

    def scenario():
        from kubernetes import client

        out = {}
        out["cert"] = len(client.CoreV1Api(_api(by_cert)).list_namespaced_pod(
            NAMESPACE).items) >= 0
        try:
            client.CoreV1Api(_api(bad)).list_namespaced_pod(NAMESPACE)
        except client.ApiException as e:
            out["bad"] = (e.status, json.loads(e.body)["reason"])
        try:  # the agent's Role lets it list pods but never delete them
            client.CoreV1Api(_api(agent)).delete_namespaced_pod("any", NAMESPACE)
        except client.ApiException as e:
            out["forbidden"] = (e.status, json.loads(e.body)["message"])
        return out

    out = await _in_thread(scenario)
    assert out["cert"] is True
    assert out["bad"] == (401, "Unauthorized")
    assert out["forbidden"][0] == 403
    assert out["forbidden"][1] == (
        'pods "any" is forbidden: User "system:serviceaccount:streamspace:streamspace-agent" '
        'cannot delete resource "pods" in API group "" in the namespace "streamspace"')


@pytest_twisted.ensureDeferred
async def test_python_client_watch_resumes_from_resource_version_and_gets_410(harness, admin):
    def scenario():
        from kubernetes import client, watch

        api = _api(admin)
        apps = client.AppsV1Api(api)
        rv = apps.list_namespaced_deployment(NAMESPACE).metadata.resource_version
        apps.create_namespaced_deployment(NAMESPACE, deployment("watched", replicas=0))
        seen = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
            apps.list_namespaced_deployment, NAMESPACE, resource_version=rv,
            label_selector="app=watched", timeout_seconds=1)]
        return rv, seen

    rv, seen = await _in_thread(scenario)
    assert ("ADDED", "watched") in seen
    harness.fake.store.compact()  # etcd compaction: the old resourceVersion is gone

    def stale():
        from kubernetes import client, watch

        apps = client.AppsV1Api(_api(admin))
        try:
            list(watch.Watch().stream(apps.list_namespaced_deployment, NAMESPACE,
                                      resource_version=rv, timeout_seconds=1))
        except client.ApiException as e:
            return e.status
        finally:
            apps.delete_namespaced_deployment("watched", NAMESPACE)
        return None

    assert await _in_thread(stale) == 410  # the client's own in-stream ERROR handling


@pytest_twisted.ensureDeferred
async def test_python_client_portforward_reaches_the_pod_vnc_server(harness, admin):
    from kubernetes import client

    def create():
        client.AppsV1Api(_api(admin)).create_namespaced_deployment(
            NAMESPACE, deployment("forward"))

    await _in_thread(create)

    def ready_pod():
        for pod in harness.fake.objects("pods"):
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if (pod["metadata"]["labels"].get("app") == "forward" and statuses
                    and statuses[0]["ready"]):
                return pod["metadata"]["name"]
        return None

    from tests.support.polling import until

    pod_name = await until(ready_pod, what="the forward pod to be ready")

    def forward():
        from kubernetes.stream import portforward

        api = client.CoreV1Api(_api(admin))
        pf = portforward(api.connect_get_namespaced_pod_portforward, pod_name, NAMESPACE,
                         ports="5901")
        sock = pf.socket(5901)
        sock.settimeout(5)
        banner = b""
        while len(banner) < 12:
            banner += sock.recv(12 - len(banner))
        sock.close()
        pf.close()
        client.AppsV1Api(_api(admin)).delete_namespaced_deployment("forward", NAMESPACE)
        return banner, pf.error(5901)

    banner, error = await _in_thread(forward)
    assert banner.startswith(b"RFB 003.")
    assert error is None


MANIFEST = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubectl-web
  labels: {app: kubectl-web}
spec:
  replicas: 1
  selector: {matchLabels: {app: kubectl-web}}
  template:
    metadata: {labels: {app: kubectl-web}}
    spec:
      containers:
        - name: main
          image: IMAGE
          ports: [{containerPort: 5901, name: vnc}]
          env: [{name: COLOUR, value: "blue"}]
"""


@pytest_twisted.ensureDeferred
async def test_kubectl_apply_rollout_get_scale_delete(harness, admin, tmp_path):
    binary = str(k8s_binary("kubectl"))
    manifest = tmp_path / "web.yaml"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "--kubeconfig", str(admin), "-n", NAMESPACE, *args],
                              capture_output=True, text=True, timeout=60)

    def scenario():
        out = {}
        manifest.write_text(MANIFEST.replace("IMAGE", IMAGE))
        out["apply"] = run("apply", "--validate=false", "-f", str(manifest))
        out["rollout"] = run("rollout", "status", "deployment/kubectl-web", "--timeout=30s")
        manifest.write_text(MANIFEST.replace("IMAGE", IMAGE).replace("blue", "green"))
        out["reapply"] = run("apply", "--validate=false", "-f", str(manifest))
        out["get"] = run("get", "deployment", "kubectl-web", "-o", "json")
        out["scale"] = run("scale", "deployment/kubectl-web", "--replicas=0")
        out["pods"] = run("get", "pods", "-l", "app=kubectl-web", "-o", "json")
        out["delete"] = run("delete", "deployment", "kubectl-web", "--timeout=30s")
        out["gone"] = run("get", "deployment", "kubectl-web", "-o", "json")
        return out

    out = await _in_thread(scenario)
    for step in ("apply", "rollout", "reapply", "get", "scale", "delete"):
        assert out[step].returncode == 0, (step, out[step].stderr)
    assert "deployment.apps/kubectl-web created" in out["apply"].stdout
    assert "successfully rolled out" in out["rollout"].stdout
    assert "configured" in out["reapply"].stdout
    got = json.loads(out["get"].stdout)
    env = got["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "COLOUR", "value": "green"}]  # strategic merge by name
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    assert "scaled" in out["scale"].stdout
    assert out["gone"].returncode == 1 and "NotFound" in out["gone"].stderr
    await until_no_pods(harness, "kubectl-web")


async def until_no_pods(harness, app: str) -> None:
    from tests.support.polling import until

    await until(lambda: not [p for p in harness.fake.objects("pods")
                             if p["metadata"]["labels"].get("app") == app],
                what=f"the pods of {app} to go")
