"""The whole product on the Kubernetes platform: the real control plane service tree (as
`twistd streamspace` builds it), real PostgreSQL, real `twistd agent --platform
kubernetes` processes, and the fake API server (it stands for a cluster; real clients
keep it honest in test_fake_contract.py) whose pods "run" a real Xvnc with an xterm.

Proves: create -> running -> VNC pixels through the control plane, both through the
API server's port-forward (agent outside, kubeconfig) and through the Service (agent
in-cluster, service-account token); progress in the session's events; a 410 mid-start
does not lose the start; hibernate -> wake -> delete; each failure kind's reason reaches
the user within 10 s; an agent restart keeps running sessions and the control plane
reconciles (an unknown session's objects are removed); two agents in two namespaces and
regions, with placement by the request's region; the Helm chart's default agent (its
environment, token and Role) registers and runs sessions.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted

from agent.platforms.base import SessionTemplate, UserRef
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.kubernetes.spec import session_spec
from streamspace.agents import provisioning
from tests.conftest import run
from tests.fakes.kube.harness import IMAGE, NAMESPACE, VNC_PORT
from tests.support import chart
from tests.support.http import poll
from tests.support.polling import until
from tests.support.stack import make_stack

pytestmark = pytest.mark.slow

TEMPLATE = "k8s-desktop"


@pytest.fixture
def stack(migrated_dsn, harness):
    s = make_stack(migrated_dsn)
    run(s.start())
    code, body = run(s.request("POST", "/api/v1/templates", {
        "name": TEMPLATE, "display_name": "Kubernetes desktop", "vnc_port": VNC_PORT,
        "cpu": 0.5, "memory_mb": 256, "persistent_home": True,
        "platforms": {"kubernetes": {"image": IMAGE}}}))
    assert code == 201, body
    yield s
    s.cleanup_agents()
    run(s.stop())


def _kube_env(harness, **extra) -> dict:
    return {"NAMESPACE": NAMESPACE, "KUBE_CONFIG_SOURCE": "kubeconfig",
            "KUBECONFIG": str(harness.kubeconfig), "KUBE_VNC_MODE": "port-forward",
            "KUBE_WATCH_TIMEOUT": "30s", **extra}


def _in_cluster_env(harness, tmp_path, token: str | None = None) -> dict:
    """What the kubelet gives a pod: the API server's address, the service account's
    token and the cluster CA mounted."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token or harness.agent_token)
    (account / "ca.crt").write_bytes(harness.fake.pki.ca_pem)
    return {"NAMESPACE": NAMESPACE, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(harness.fake.port),
            "KUBE_SERVICE_ACCOUNT_DIR": str(account)}


def _objects(harness, plural: str, sid: str, namespace: str = NAMESPACE) -> list[dict]:
    return [o for o in harness.fake.objects(plural, namespace) if k8s.session_of(o) == sid]


async def _events(stack, sid: str) -> list[tuple[str, str]]:
    rows = await stack.service.getServiceNamed("database").db.query(
        "SELECT state, coalesce(message, '') FROM session_events WHERE session_id = %s "
        "ORDER BY id", (sid,))
    return [(r[0], r[1]) for r in rows]


async def _gone(stack, sid: str) -> None:
    async def terminated():
        code, body = await stack.request("GET", f"/api/v1/sessions/{sid}")
        return code == 404 or body["state"] == "terminated"

    await poll(terminated, what=f"session {sid} to terminate")


@pytest_twisted.ensureDeferred
async def test_port_forward_life_restart_and_reconcile(stack, harness, tmp_path):
    agent = await stack.start_agent("k8s-outside", platform="kubernetes",
                                    extra_env=_kube_env(harness))
    session = await stack.create_session(TEMPLATE)
    sid = session["id"]
    # the API server compacts and ends the pods watch with an in-stream 410 mid-start
    await until(lambda: _objects(harness, "pods", sid), timeout=15, what="the session's pod")
    harness.fake.expire_watches("pods")
    running = await stack.wait_state(sid, "running", "failed", timeout=20)
    assert running["state"] == "running", running
    assert running["platform"] == "kubernetes" and running["agent_id"] == "k8s-outside"
    colours = await stack.vnc_capture(sid, tmp_path / "pf.png")
    assert colours >= 2, colours  # the xterm drawn in the pod's display, not a blank frame
    assert any(r[3] == "pods/portforward" for r in harness.fake.requests)
    messages = [m for _s, m in await _events(stack, sid)]
    assert any(m.startswith("scheduled on node fake-node-1") for m in messages), messages
    assert any(f'pulling image "{IMAGE}"' in m for m in messages), messages

    code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "hibernated"})
    assert code in (200, 202), body
    await stack.wait_state(sid, "hibernated")
    assert _objects(harness, "deployments", sid)[0]["spec"]["replicas"] == 0
    await until(lambda: not _objects(harness, "pods", sid), what="the pod to go")
    code, body = await stack.request("PATCH", f"/api/v1/sessions/{sid}", {"state": "running"})
    assert code in (200, 202), body
    await stack.wait_state(sid, "running", timeout=20)
    assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")

    # agent restart: the session keeps running; a Deployment of a session the control
    # plane does not know (left by an earlier run) is removed by the reconciliation
    # twistd exits by re-raising the signal it stopped for, after a clean shutdown
    assert await stack.stop_agent_async(agent) == -signal.SIGTERM
    assert "agent stopped (0 session(s) stopped)" in agent.log()
    assert _objects(harness, "deployments", sid)  # pods outlive the agent
    stray = "51a40000-0000-4000-8000-00000000dead"
    spec = session_spec(stray, SessionTemplate.from_json({
        "name": TEMPLATE, "vnc_port": VNC_PORT, "platforms": {"kubernetes": {"image": IMAGE}}}),
        UserRef("u-stray", "stray"))
    fake = harness.fake
    fake.store.create(fake.DEPLOYMENTS, NAMESPACE, fake.defaults(
        fake.DEPLOYMENTS, k8s.deployment(spec, NAMESPACE, "k8s-outside")))
    token = await stack.request("POST", "/api/v1/agents/k8s-outside/token")
    again = await stack.start_agent("k8s-outside", token=token[1]["token"],
                                    platform="kubernetes", extra_env=_kube_env(harness))
    assert (await stack.session(sid))["state"] == "running"
    assert (await stack.vnc_banner(sid)).startswith(b"RFB 003.")
    await until(lambda: not _objects(harness, "deployments", stray), timeout=15,
                what="the unknown session's Deployment to be removed")

    code, _ = await stack.request("DELETE", f"/api/v1/sessions/{sid}")
    assert code in (202, 204)
    await _gone(stack, sid)
    await until(lambda: not _objects(harness, "deployments", sid)
                and not _objects(harness, "services", sid), what="the objects to go")
    homes = [c for c in harness.fake.objects("persistentvolumeclaims")
             if c["metadata"]["labels"].get(k8s.TEMPLATE) == TEMPLATE]
    assert homes, "the persistent home is kept after the session"
    assert again.proc.poll() is None


@pytest_twisted.ensureDeferred
async def test_in_cluster_service_mode_failures_and_regions(stack, harness, tmp_path):
    await stack.start_agent("k8s-inside", platform="kubernetes",
                            extra_env={**_in_cluster_env(harness, tmp_path), "REGION": "eu"})
    fake = harness.fake
    fake.add_namespace("streamspace-us")
    await stack.start_agent("k8s-us", platform="kubernetes", extra_env={
        **_kube_env(harness), "NAMESPACE": "streamspace-us", "REGION": "us"})

    code, body = await stack.request("POST", "/api/v1/sessions",
                                     {"template": TEMPLATE, "region": "eu"})
    assert code == 201, body
    sid = body["id"]
    running = await stack.wait_state(sid, "running", "failed", timeout=20)
    assert running["state"] == "running" and running["agent_id"] == "k8s-inside", running
    forwards = sum(1 for r in fake.requests if r[3] == "pods/portforward")
    assert await stack.vnc_capture(sid, tmp_path / "svc.png") >= 2
    assert sum(1 for r in fake.requests if r[3] == "pods/portforward") == forwards  # Service

    code, body = await stack.request("POST", "/api/v1/sessions",
                                     {"template": TEMPLATE, "region": "us"})
    assert code == 201, body
    us = await stack.wait_state(body["id"], "running", "failed", timeout=20)
    assert us["agent_id"] == "k8s-us" and us["state"] == "running", us
    assert _objects(harness, "deployments", body["id"], "streamspace-us")

    bad_image = "registry.example.com/nope:missing"
    fake.pull_failures[bad_image] = f"{bad_image}: not found"
    crasher = "registry.example.com/crashes:1"
    fake.crash_images.add(crasher)
    kinds = {
        "k8s-pull": ({"image": bad_image}, {}, "cannot be pulled"),
        "k8s-cpu": ({"image": IMAGE}, {"cpu": 64}, "Insufficient cpu"),
        "k8s-crash": ({"image": crasher}, {}, "keeps crashing"),
    }
    for name, (k8s_settings, extra, _) in kinds.items():
        code, body = await stack.request("POST", "/api/v1/templates", {
            "name": name, "vnc_port": VNC_PORT, "cpu": 0.5, "memory_mb": 256, **extra,
            "platforms": {"kubernetes": k8s_settings}})
        assert code == 201, body
    for name, (_, _, reason) in kinds.items():
        created = await stack.create_session(name)
        failed = await stack.wait_state(created["id"], "failed", "running", timeout=10)
        assert failed["state"] == "failed" and reason in (failed["error"] or ""), failed
    fake.quota["pods"] = len([p for p in fake.objects("pods")
                              if not p["metadata"].get("deletionTimestamp")])
    try:
        created = await stack.create_session(TEMPLATE)
        failed = await stack.wait_state(created["id"], "failed", "running", timeout=10)
        assert "exceeded quota" in (failed["error"] or ""), failed
    finally:
        del fake.quota["pods"]


@pytest_twisted.ensureDeferred
async def test_the_charts_agent_registers_and_runs_sessions(stack, harness, helm, tmp_path):
    """The chart's default install has a working agent: a real `twistd agent` with the
    environment, mounted token and Role the default render gives its pod (as the kubelet
    would: Secret volumes written under a directory standing for the pod's filesystem, the
    in-cluster service-account token and API address), its token registered the way the
    migration Job's provision-agent container does. Only CONTROL_PLANE_URL is replaced: the
    Service's cluster DNS name resolves only in a cluster."""
    objects = chart.render(helm, [])
    name = f"{chart.FULL}-agent"
    env = chart.pod_environment(objects, "Deployment", name, "agent", tmp_path / "agent-pod")
    sessions = env["NAMESPACE"]
    assert sessions == f"{chart.NAMESPACE}-sessions"  # their own namespace, by default
    harness.fake.add_namespace(sessions)
    account = objects[("ServiceAccount", chart.pod_spec(objects, "Deployment", name)[
        "serviceAccountName"])]["metadata"]
    user = f"system:serviceaccount:{account['namespace']}:{account['name']}"
    kubelet = _in_cluster_env(harness, tmp_path, harness.fake.add_user(
        user, objects[("Role", name)]["rules"]))
    del kubelet["NAMESPACE"]  # the chart's
    env.update(kubelet)
    assert env["CONTROL_PLANE_URL"] == f"http://{chart.FULL}.{chart.NAMESPACE}.svc:8080"
    env["CONTROL_PLANE_URL"] = stack.base

    job = chart.pod_environment(objects, "Job", f"{chart.FULL}-migrate", "provision-agent",
                                tmp_path / "job")
    agent_id, _db, token = provisioning._settings(job)
    await provisioning.ensure_agent(stack.service.getServiceNamed("database").db,
                                    agent_id=agent_id, platform="kubernetes",
                                    region=job["REGION"], token=token,
                                    provisioned_by="deployment")
    assert agent_id == env["AGENT_ID"]
    # the token only from its mounted file, as in the pod (AGENT_TOKEN is not set there)
    await stack.start_agent(agent_id, token=token, platform="kubernetes",
                            extra_env={**env, "AGENT_TOKEN": ""})

    session = await stack.create_session(TEMPLATE)
    running = await stack.wait_state(session["id"], "running", "failed", timeout=20)
    assert running["state"] == "running" and running["agent_id"] == agent_id, running
    assert (await stack.vnc_banner(session["id"])).startswith(b"RFB 003.")
    assert _objects(harness, "deployments", session["id"], sessions)
    assert not [r for r in harness.fake.refusals if r[0] == user]
    assert {r[4] for r in harness.fake.requests if r[0] == user} == {sessions}
    code, _ = await stack.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert code in (202, 204)
    await _gone(stack, session["id"])
