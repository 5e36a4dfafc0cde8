"""What the chart grants and fences, rendered by the real `helm`: the agent's Role is
exactly deploy/kubernetes/rbac.yaml (which the driver's tests enforce against a session
life), sessions run in a namespace of their own, NetworkPolicies let only the agent reach
session pods, only the control plane reach the bundled PostgreSQL and only the monitoring
namespace reach /metrics (which no public Service exposes), an Ingress needs trusted
proxies, and the environment every pod gets passes that program's own validation."""

from __future__ import annotations

import pytest
import yaml

from agent.config import AgentOptions
from agent.platforms.base import SessionTemplate, UserRef
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.kubernetes.spec import session_spec
from streamspace.agents import provisioning
from streamspace.config import ServerOptions
from tests.fakes.kube.server import load_role_rules
from tests.integration.deploy.chart_variants import VARIANTS
from tests.support.chart import (
    CHART,
    FULL,
    NAMESPACE,
    RELEASE,
    container,
    env_of,
    helm_run,
    pod_environment,
    pod_spec,
    render,
)
from tests.support.processes import REPO

SESSIONS = f"{NAMESPACE}-sessions"
RBAC = REPO / "deploy" / "kubernetes" / "rbac.yaml"
SESSION_POLICY = REPO / "deploy" / "kubernetes" / "networkpolicy.yaml"
# What the kubelet fills in (fieldRef) and what operators' own Secrets hold
FIELDS = {"metadata.name": "ss-streamspace-7d9f-abcde", "status.podIP": "10.244.1.7"}
OUTSIDE = {"corp-db": {"pw": "the-corporate-db-password"},
           "corp-metrics": {"scrape": "a-scrape-token-of-32-characters!"}}


@pytest.fixture(scope="module")
def rendered(helm):
    return {name: render(helm, sets) for name, sets in VARIANTS.items()}


def _triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or \
                (op == "NotIn" and value in expr["values"]) or \
                (op == "Exists" and value is None) or \
                (op == "DoesNotExist" and value is not None):
            return False
    return True


def _pod_labels(objects: dict, kind: str, name: str) -> dict:
    return objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]


def _session_pod_labels_and_spec() -> tuple[dict, dict]:
    """What the Kubernetes driver really puts in a session's pod template."""
    template = SessionTemplate.from_json({"name": "desk", "vnc_port": 5901, "cpu": 1,
                                          "memory_mb": 512, "persistent_home": True,
                                          "platforms": {"kubernetes": {"image": "i:1"}}})
    spec = session_spec("5e550000-0000-4000-8000-000000000001", template,
                        UserRef("u1", "alice"), "")
    pod = k8s.deployment(spec, SESSIONS, "agent")["spec"]["template"]
    return pod["metadata"]["labels"], pod["spec"]


# -- the agent's rights ------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default", "sessions-namespace", "release-namespace"])
def test_the_agents_role_is_exactly_deploy_kubernetes_rbac(rendered, variant):
    objects = rendered[variant]
    role = objects[("Role", f"{FULL}-agent")]
    # deploy/kubernetes/rbac.yaml is the chart rendered (test_helm_chart checks it is
    # current) and test_manifests.py checks a session life uses every rule and no other.
    assert _triples(role["rules"]) == _triples(load_role_rules(RBAC))
    assert not any("*" in t for t in _triples(role["rules"]))
    sessions = env_of(container(objects, f"{FULL}-agent", "agent"))["NAMESPACE"]
    binding = objects[("RoleBinding", f"{FULL}-agent")]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == sessions
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-agent",
                                    "namespace": NAMESPACE}]
    account = objects[("ServiceAccount", f"{FULL}-agent")]
    assert account["metadata"]["namespace"] == NAMESPACE
    agent = objects[("Deployment", f"{FULL}-agent")]
    assert agent["spec"]["template"]["spec"]["serviceAccountName"] == f"{FULL}-agent"
    assert agent["spec"]["strategy"] == {"type": "Recreate"}


def test_the_agent_names_the_control_plane_service_and_mounts_its_token(rendered):
    objects = rendered["default"]
    env = env_of(container(objects, f"{FULL}-agent", "agent"))
    port = objects[("Service", FULL)]["spec"]["ports"][0]["port"]
    assert env["CONTROL_PLANE_URL"] == f"http://{FULL}.{NAMESPACE}.svc:{port}"
    assert env["PLATFORM"] == "kubernetes"
    assert env["AGENT_TOKEN_FILE"].startswith("/var/run/secrets/streamspace/")
    volumes = {v["name"]: v for v in pod_spec(objects, "Deployment", f"{FULL}-agent")["volumes"]}
    assert volumes["agent-token"]["secret"]["secretName"] == f"{FULL}-agent-token"


# -- where sessions run ------------------------------------------------------------------

def test_sessions_run_in_a_namespace_of_their_own(rendered, helm):
    default = rendered["default"]
    assert env_of(container(default, f"{FULL}-agent", "agent"))["NAMESPACE"] == SESSIONS
    namespace = default[("Namespace", SESSIONS)]
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert default[("NetworkPolicy", f"{FULL}-sessions")]["metadata"]["namespace"] == SESSIONS
    # the namespace's Pod Security level admits every pod the driver makes
    _, pod = _session_pod_labels_and_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {next(iter(v.keys() - {"name"})) for v in pod.get("volumes", [])} <= {
        "persistentVolumeClaim", "emptyDir", "configMap", "secret", "projected"}

    named = rendered["sessions-namespace"]
    assert ("Namespace", "sessions") in named
    assert env_of(container(named, f"{FULL}-agent", "agent"))["NAMESPACE"] == "sessions"
    assert not [k for k in rendered["release-namespace"] if k[0] == "Namespace"]
    assert not [k for k in render(helm, ["k8sAgent.createNamespace=false"])
                if k[0] == "Namespace"]

    refused = helm_run(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                       "--set", f"k8sAgent.config.namespace={NAMESPACE}", check=False)
    assert refused.returncode != 0
    assert "is the release namespace" in refused.stderr
    assert "k8sAgent.allowReleaseNamespace=true" in refused.stderr
    too_long = helm_run(helm, "template", RELEASE, str(CHART), "--namespace", "n" * 60,
                        check=False)
    assert too_long.returncode != 0 and "longer than 63 characters" in too_long.stderr


# -- network policies --------------------------------------------------------------------

def test_only_the_agent_reaches_session_pods_and_only_their_vnc_port(rendered, helm):
    session_labels, session_pod = _session_pod_labels_and_spec()
    for variant, sessions in (("default", SESSIONS), ("sessions-namespace", "sessions"),
                              ("release-namespace", NAMESPACE)):
        objects = rendered[variant]
        policy = objects[("NetworkPolicy", f"{FULL}-sessions")]
        assert policy["metadata"]["namespace"] == sessions
        assert _selects(policy["spec"]["podSelector"], session_labels)
        for kind, name in (("Deployment", f"{FULL}-agent"), ("Deployment", FULL),
                           ("StatefulSet", f"{FULL}-postgresql")):
            assert not _selects(policy["spec"]["podSelector"], _pod_labels(objects, kind, name))
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        (peer,) = rule["from"]
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": NAMESPACE}
        assert _selects(peer["podSelector"], _pod_labels(objects, "Deployment", f"{FULL}-agent"))
        assert not _selects(peer["podSelector"], _pod_labels(objects, "Deployment", FULL))
        assert rule["ports"] == [{"protocol": "TCP", "port": k8s.VNC_PORT_NAME}]
    # the session pod's VNC port carries that name, whatever its number
    assert [p["name"] for p in session_pod["containers"][0]["ports"]] == [k8s.VNC_PORT_NAME]
    # deploy/kubernetes/networkpolicy.yaml is the same policy (the chart for release
    # "streamspace")
    [standalone] = [d for d in yaml.safe_load_all(SESSION_POLICY.read_text()) if d]
    again = render(helm, [], release="streamspace")[("NetworkPolicy", "streamspace-sessions")]
    assert standalone["spec"] == again["spec"]


def test_only_the_control_plane_and_migrations_reach_the_bundled_database(rendered):
    objects = rendered["default"]
    policy = objects[("NetworkPolicy", f"{FULL}-postgresql")]
    assert _selects(policy["spec"]["podSelector"],
                    _pod_labels(objects, "StatefulSet", f"{FULL}-postgresql"))
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert "namespaceSelector" not in peer  # the release's namespace only
    assert _selects(peer["podSelector"], _pod_labels(objects, "Deployment", FULL))
    assert _selects(peer["podSelector"], _pod_labels(objects, "Job", f"{FULL}-migrate"))
    assert not _selects(peer["podSelector"], _pod_labels(objects, "Deployment", f"{FULL}-agent"))
    assert not _selects(peer["podSelector"], _session_pod_labels_and_spec()[0])
    postgres = container(objects, f"{FULL}-postgresql", "postgresql", kind="StatefulSet")
    assert rule["ports"] == [{"protocol": "TCP", "port": "postgresql"}]
    assert [p["name"] for p in postgres["ports"]] == ["postgresql"]
    assert ("NetworkPolicy", f"{FULL}-postgresql") not in rendered["external-database"]


def test_metrics_are_reachable_from_the_monitoring_namespace_only(rendered):
    objects = rendered["default"]
    policy = objects[("NetworkPolicy", f"{FULL}-control-plane")]
    assert _selects(policy["spec"]["podSelector"], _pod_labels(objects, "Deployment", FULL))
    open_rule, metrics_rule = policy["spec"]["ingress"]
    assert "from" not in open_rule  # users, the ingress controller, agents, replicas
    ranges = [(p["port"], p.get("endPort", p["port"])) for p in open_rule["ports"]]
    for port in (1, 8080, 9089, 9091, 65535):
        assert any(lo <= port <= hi for lo, hi in ranges), port
    assert not any(lo <= 9090 <= hi for lo, hi in ranges)
    assert metrics_rule == {"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": 9090}]}
    assert not [k for k in rendered["no-network-policies"] if k[0] == "NetworkPolicy"]


# -- metrics, ingress --------------------------------------------------------------------

def test_metrics_have_their_own_cluster_ip_service_only_with_the_service_monitor(rendered):
    for variant in ("default", "service-monitor"):
        service = rendered[variant][("Service", FULL)]
        assert [p["name"] for p in service["spec"]["ports"]] == ["http"], variant
    assert rendered["service-monitor"][("Service", FULL)]["spec"]["type"] == "LoadBalancer"
    assert ("Service", f"{FULL}-metrics") not in rendered["default"]
    assert not [k for k in rendered["default"] if k[0] == "ServiceMonitor"]

    objects = rendered["service-monitor"]
    metrics = objects[("Service", f"{FULL}-metrics")]
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["ports"] == [{"name": "metrics", "port": 9090,
                                         "targetPort": "metrics", "protocol": "TCP"}]
    assert _selects({"matchLabels": metrics["spec"]["selector"]},
                    _pod_labels(objects, "Deployment", FULL))
    monitor = objects[("ServiceMonitor", FULL)]
    selector = monitor["spec"]["selector"]
    assert _selects(selector, metrics["metadata"]["labels"])
    assert not _selects(selector, objects[("Service", FULL)]["metadata"]["labels"])
    cp = container(objects, FULL, "control-plane")
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in cp["ports"]
    assert env_of(cp)["METRICS_ADDRESS"] == "0.0.0.0:9090"
    # the token: the control plane wants it, the ServiceMonitor sends it, one Secret
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {
        "name": f"{FULL}-metrics", "key": "token"}}
    assert env_of(cp)["METRICS_TOKEN"] == {"secretKeyRef": {"name": f"{FULL}-metrics",
                                                            "key": "token"}}
    assert ("Secret", f"{FULL}-metrics") in objects
    existing = rendered["metrics-existing-secret"]
    assert env_of(container(existing, FULL, "control-plane"))["METRICS_TOKEN"] == {
        "secretKeyRef": {"name": "corp-metrics", "key": "scrape"}}
    assert ("Secret", f"{FULL}-metrics") not in existing
    assert "METRICS_TOKEN" not in env_of(container(rendered["default"], FULL, "control-plane"))
    ingress = [o for (kind, _), o in rendered["ingress"].items() if kind == "Ingress"]
    assert ingress and "metrics" not in yaml.safe_dump(ingress)


def test_an_ingress_needs_the_trusted_proxies_or_an_explicit_opt_out(rendered, helm):
    refused = helm_run(helm, "template", RELEASE, str(CHART), "--set", "ingress.enabled=true",
                       check=False)
    assert refused.returncode != 0
    assert "ingress.enabled needs api.trustedProxies" in refused.stderr
    assert "ingress.allowWithoutTrustedProxies=true" in refused.stderr
    accepted = render(helm, ["ingress.enabled=true", "ingress.allowWithoutTrustedProxies=true"])
    assert ("Ingress", FULL) in accepted
    assert env_of(container(rendered["ingress"], FULL, "control-plane"))[
        "TRUSTED_PROXIES"] == "10.244.0.0/16"


# -- every pod's environment passes that program's own validation ------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pods_environment_passes_its_programs_validation(rendered, variant, tmp_path):
    """What a pod would crash-loop on at start (an unknown PLATFORM, a bad duration, a
    missing token file, a short secret) fails here: each container's environment, as the
    kubelet builds it from the rendered objects, parsed by the program it configures."""
    objects = rendered[variant]

    def environment(kind: str, name: str, container_name: str) -> dict[str, str]:
        return pod_environment(objects, kind, name, container_name,
                               tmp_path / name / container_name, FIELDS, OUTSIDE)

    ServerOptions(environ=environment("Deployment", FULL, "control-plane")).parseOptions([])
    migrate = ServerOptions(environ=environment("Job", f"{FULL}-migrate", "migrate"))
    migrate.parseOptions(["--migrate-only"])
    if ("Deployment", f"{FULL}-agent") not in objects:
        return
    env = environment("Deployment", f"{FULL}-agent", "agent")
    options = AgentOptions(environ=env)
    options.parseOptions([])
    assert options["platform"] == "kubernetes"
    assert open(options["agent_token_file"]).read().strip()
    agent_id, _db, token = provisioning._settings(
        environment("Job", f"{FULL}-migrate", "provision-agent"))
    assert agent_id == options["agent_id"] and token == open(env["AGENT_TOKEN_FILE"]).read()
