"""deploy/kubernetes/ against what the driver really does, and what the driver sends
against the Kubernetes schemas.

The fake API server enforces the agent's Role from deploy/kubernetes/rbac.yaml and records
every request: a full session life (persistent home, port-forward VNC, adoption after an
interrupted start, hibernate, wake, purge) must use exactly the verbs and resources the
Role grants, no more (least privilege) and no less (it would be refused in a cluster).
Every object the driver created is validated with kubernetes-validate, strictly (unknown
fields rejected), for Kubernetes 1.30 and the newest bundled version.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor

from agent.platforms.base import UserRef
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.xvnc import read_rfb_banner
from tests.fakes.kube.harness import AGENT_USER, RBAC
from tests.fakes.kube.server import load_role_rules

pytestmark = pytest.mark.slow

VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NETWORK_POLICY = RBAC.parent / "networkpolicy.yaml"
BOB = UserRef("b0b00000-0000-4000-8000-0000000000bb", "bob")


def _granted() -> set[tuple[str, str, str]]:
    granted = set()
    for rule in load_role_rules(RBAC):
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, res, verb))
    return granted


@pytest_twisted.ensureDeferred
async def test_the_role_grants_exactly_what_a_session_life_uses(harness):
    driver = harness.driver(agent_id="agent-rbac")
    await driver.start()
    template = harness.template(persistent_home=True)
    sid = "5e550000-0000-4000-8000-000000000001"
    await driver.start_session(sid, template, BOB, "rbac")
    banner = await read_rfb_banner(reactor, await driver.vnc_endpoint(sid), timeout=5)
    assert banner.startswith(b"RFB 003.")
    await driver.hibernate_session(sid)
    # a start for a session whose Deployment exists (a redelivered start after an agent
    # restart): create answers 409, the driver reads the object back and scales it up
    await driver.start_session(sid, template, BOB, "rbac")
    await driver.hibernate_session(sid)
    await driver.wake_session(sid, template, None)
    await driver.stop_session(sid, purge=True)
    used = harness.fake.verbs_used(AGENT_USER)
    granted = _granted()
    assert used == granted, (f"used but not granted: {sorted(used - granted)}; granted but "
                             f"unused: {sorted(granted - used)}")
    assert not [r for r in harness.fake.refusals if r[0] == AGENT_USER]


@pytest_twisted.ensureDeferred
async def test_every_object_the_driver_sent_validates_strictly(harness):
    sent = [body for user, verb, body in harness.fake.bodies
            if user == AGENT_USER and verb == "create"]
    kinds = {body["kind"] for body in sent}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= kinds, kinds
    for body in sent:
        for version in VERSIONS:
            kubernetes_validate.validate(body, version, strict=True)


def test_manifests_validate_and_the_network_policy_selects_session_pods(harness):
    docs = [d for path in (RBAC, NETWORK_POLICY) for d in yaml.safe_load_all(path.read_text())
            if d]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding",
                                         "NetworkPolicy"}
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deployments = [b for u, v, b in harness.fake.bodies
                   if u == AGENT_USER and b.get("kind") == "Deployment"]
    assert deployments
    for dep in deployments:
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        wanted = policy["spec"]["podSelector"]["matchLabels"]
        assert all(pod_labels.get(k) == v for k, v in wanted.items()), pod_labels
        container = dep["spec"]["template"]["spec"]["containers"][0]
        allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert {p["name"] for p in container["ports"]} == allowed == {k8s.VNC_PORT_NAME}
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    assert AGENT_USER == (f"system:serviceaccount:{account['metadata']['namespace']}:"
                          f"{account['metadata']['name']}")
