"""The Helm chart, rendered and linted by the real `helm` binary, every object validated
against Kubernetes' own schemas (kubernetes-validate, strict), and the properties that
matter asserted on what it renders. There is no cluster here: `lookup` sees nothing, so the
kept-secrets logic is checked with `_lookupOverride` standing for the cluster's answer."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from tests.support.processes import REPO

CHART = REPO / "deploy" / "helm" / "streamspace"
RELEASE, NAMESPACE = "ss", "streamspace"
FULL = f"{RELEASE}-streamspace"
KUBE_VERSIONS = ("1.30.0", latest_version())
# Kinds that come from CRDs: no bundled schema to validate against (asserted on instead).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

VARIANTS = {
    "default": [],
    "external-database": ["database.host=db.example.com", "database.password=s3cret-db"],
    "external-database-existing-secret": ["database.host=db.example.com",
                                          "database.existingSecret=corp-db",
                                          "database.existingSecretKey=pw"],
    "agent-disabled": ["k8sAgent.enabled=false"],
    "ingress": ["ingress.enabled=true", "ingress.host=desk.example.org",
                "ingress.className=nginx", "ingress.tls.enabled=true"],
    "custom-images": ["api.image.registry=ghcr.io/acme", "api.image.tag=1.2.3",
                      "api.image.repository=ss/cp", "k8sAgent.image.registry=ghcr.io/acme",
                      "k8sAgent.image.repository=ss/agent", "k8sAgent.image.tag=1.2.3",
                      "api.image.pullPolicy=Always"],
    "two-replicas": ["api.replicas=2", "api.podDisruptionBudget.enabled=true"],
    "service-monitor": ["metrics.serviceMonitor.enabled=true"],
    "sessions-namespace": ["k8sAgent.config.namespace=sessions"],
}


def helm_run(helm_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(helm_bin: Path, sets: list[str], kube: str = "1.30.0", extra: tuple = ()) -> dict:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube]
    for s in sets:
        args += ["--set", s]
    out = helm_run(helm_bin, *args, *extra).stdout
    objects = {}
    for obj in yaml.safe_load_all(out):
        if obj:
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in objects, f"rendered twice: {key}"
            objects[key] = obj
    return objects


def container(objects: dict, deployment: str, name: str) -> dict:
    spec = objects[("Deployment", deployment)]["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.fixture(scope="module")
def rendered(helm):
    return {name: render(helm, sets) for name, sets in VARIANTS.items()}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict_passes(helm, variant):
    args = ["lint", "--strict", str(CHART)]
    for s in VARIANTS[variant]:
        args += ["--set", s]
    result = helm_run(helm, *args)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_valid_kubernetes_in_strict_mode(helm, variant, kube):
    objects = render(helm, VARIANTS[variant], kube=kube)
    problems = []
    for key, obj in objects.items():
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except SchemaNotFoundError:
            if (obj["apiVersion"], obj["kind"]) not in CRD_KINDS:
                problems.append(f"{key}: no schema for {obj['apiVersion']}")
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{key}: {str(e).splitlines()[0]}")
    assert not problems, problems


def test_values_schema_rejects_typos_and_bad_types(helm):
    for bad in ("api.replica=2", "api.replicas=zero", "api.logLevel=chatty",
                "k8sAgent.config.heartbeatInterval=often", "jwtSecret=too-short",
                "adminPassword=short"):
        result = helm_run(helm, "template", RELEASE, str(CHART), "--set", bad, check=False)
        assert result.returncode != 0 and "values don't meet the specifications" in result.stderr \
            or "at '/" in result.stderr, (bad, result.stderr)


def test_an_external_database_needs_a_password_and_neither_database_fails(helm):
    no_password = helm_run(helm, "template", RELEASE, str(CHART), "--set",
                           "database.host=db.example.com", check=False)
    assert no_password.returncode != 0 and "database.password" in no_password.stderr
    none = helm_run(helm, "template", RELEASE, str(CHART), "--set", "postgresql.enabled=false",
                    check=False)
    assert none.returncode != 0 and "set database.host" in none.stderr


def test_control_plane_probes_env_from_secrets_and_security(rendered):
    objects = rendered["default"]
    cp = container(objects, FULL, "control-plane")
    assert cp["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert cp["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    env = env_of(cp)
    for name, secret, key in (("JWT_SECRET", f"{FULL}-jwt", "secret"),
                              ("DB_PASSWORD", f"{FULL}-db", "password"),
                              ("ADMIN_PASSWORD", f"{FULL}-admin-credentials", "password")):
        assert env[name] == {"secretKeyRef": {"name": secret, "key": key}}, name
        assert ("Secret", secret) in objects
    assert env["DB_HOST"] == f"{FULL}-postgresql"
    assert ("Service", f"{FULL}-postgresql") in objects
    assert ("StatefulSet", f"{FULL}-postgresql") in objects
    # No secret value is ever inlined in a pod spec.
    secret_values = {base64.b64decode(v).decode() for (kind, _), o in objects.items()
                     if kind == "Secret" for v in o["data"].values()} - {"admin"}
    pod_specs = json.dumps([o["spec"] for (kind, _), o in objects.items()
                            if kind in ("Deployment", "StatefulSet", "Job")])
    assert not [v for v in secret_values if v in pod_specs]
    sc = cp["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001 and not sc["allowPrivilegeEscalation"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    pod = objects[("Deployment", FULL)]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_agent_rbac_grants_the_least_verbs_and_names_the_control_plane_service(rendered):
    objects = rendered["default"]
    role = objects[("Role", f"{FULL}-agent")]
    rules = {(g, r): sorted(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {
        ("apps", "deployments"): sorted(["get", "list", "watch", "create", "patch", "delete"]),
        ("", "services"): sorted(["get", "list", "watch", "create", "delete"]),
        ("", "persistentvolumeclaims"): sorted(["get", "list", "watch", "create", "delete"]),
        ("", "pods"): ["get", "list", "watch"],
        ("", "events"): ["get", "list", "watch"],
        ("", "pods/portforward"): ["create", "get"],
    }
    assert not any("*" in v for v in rules.values())
    binding = objects[("RoleBinding", f"{FULL}-agent")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-agent",
                                    "namespace": NAMESPACE}]
    agent_pod = objects[("Deployment", f"{FULL}-agent")]["spec"]["template"]["spec"]
    assert agent_pod["serviceAccountName"] == f"{FULL}-agent"
    assert objects[("Deployment", f"{FULL}-agent")]["spec"]["strategy"] == {"type": "Recreate"}
    env = env_of(container(objects, f"{FULL}-agent", "agent"))
    service = objects[("Service", FULL)]
    port = service["spec"]["ports"][0]["port"]
    assert env["CONTROL_PLANE_URL"] == f"http://{FULL}.{NAMESPACE}.svc:{port}"
    assert env["PLATFORM"] == "kubernetes" and env["NAMESPACE"] == NAMESPACE
    assert env["AGENT_TOKEN_FILE"].startswith("/var/run/secrets/streamspace/")
    volumes = {v["name"]: v for v in agent_pod["volumes"]}
    assert volumes["agent-token"]["secret"]["secretName"] == f"{FULL}-agent-token"


def test_the_migration_job_migrates_then_registers_the_agent_token(rendered):
    for variant, hook in (("default", "post-install,pre-upgrade"),
                          ("external-database", "pre-install,pre-upgrade")):
        objects = rendered[variant]
        job = objects[("Job", f"{FULL}-migrate")]
        assert job["metadata"]["annotations"]["helm.sh/hook"] == hook, variant
        spec = job["spec"]["template"]["spec"]
        (migrate,) = spec["initContainers"]
        assert migrate["args"] == ["--migrate-only"]
        (provision,) = spec["containers"]
        assert provision["command"][-2:] == ["-m", "streamspace.agents.provisioning"]
        assert env_of(provision)["AGENT_ID"] == f"{FULL}-k8s"
        # The Secrets it reads are hooks that run before it.
        for (kind, _), obj in objects.items():
            if kind == "Secret":
                annotations = obj["metadata"]["annotations"]
                assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
                assert int(annotations["helm.sh/hook-weight"]) < 0
    # Bundled database: it is created by the install itself, so the pods migrate too.
    cp_env = env_of(container(rendered["default"], FULL, "control-plane"))
    assert cp_env["STREAMSPACE_MIGRATE"] == "true"
    assert "STREAMSPACE_MIGRATE" not in env_of(container(rendered["external-database"], FULL,
                                                         "control-plane"))
    job = rendered["agent-disabled"][("Job", f"{FULL}-migrate")]["spec"]["template"]["spec"]
    assert [c["name"] for c in job["containers"]] == ["migrate"] and "initContainers" not in job


def test_network_policy_lets_only_the_agent_reach_session_vnc_ports(rendered):
    for variant, session_ns in (("default", NAMESPACE), ("sessions-namespace", "sessions")):
        objects = rendered[variant]
        policy = objects[("NetworkPolicy", f"{FULL}-sessions")]
        assert policy["metadata"]["namespace"] == session_ns
        assert policy["spec"]["podSelector"] == {
            "matchLabels": {"app.kubernetes.io/managed-by": "streamspace"}}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        (peer,) = rule["from"]
        agent_labels = objects[("Deployment", f"{FULL}-agent")]["spec"]["template"]["metadata"][
            "labels"]
        assert peer["podSelector"]["matchLabels"] == agent_labels
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": NAMESPACE}
        assert rule["ports"] == [{"protocol": "TCP", "port": 5900, "endPort": 5999}]
        # The policy must not select the agent or control plane themselves.
        assert agent_labels.get("app.kubernetes.io/managed-by") != "streamspace"
        assert objects[("Role", f"{FULL}-agent")]["metadata"]["namespace"] == session_ns


def test_external_database_bundles_nothing_and_uses_the_given_secret(rendered):
    objects = rendered["external-database"]
    assert not [k for k in objects if k[0] == "StatefulSet"]
    env = env_of(container(objects, FULL, "control-plane"))
    assert env["DB_HOST"] == "db.example.com"
    db_secret = objects[("Secret", f"{FULL}-db")]
    assert base64.b64decode(db_secret["data"]["password"]) == b"s3cret-db"
    existing = rendered["external-database-existing-secret"]
    assert ("Secret", f"{FULL}-db") not in existing
    env = env_of(container(existing, FULL, "control-plane"))
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "corp-db", "key": "pw"}}


def test_agent_disabled_renders_no_agent_objects(rendered):
    objects = rendered["agent-disabled"]
    assert not [k for k in objects if "agent" in k[1]]
    assert not [k for k in objects if k[0] in ("Role", "RoleBinding", "ServiceAccount",
                                               "NetworkPolicy")]


def test_ingress_routes_to_the_service_with_websocket_timeouts(rendered):
    objects = rendered["ingress"]
    ingress = objects[("Ingress", FULL)]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "desk.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULL, "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["desk.example.org"], "secretName": f"{FULL}-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    env = env_of(container(objects, FULL, "control-plane"))
    assert env["PUBLIC_URL"] == "https://desk.example.org"
    assert ("Ingress", FULL) not in rendered["default"]


def test_custom_images_and_two_replicas(rendered):
    objects = rendered["custom-images"]
    cp = container(objects, FULL, "control-plane")
    assert cp["image"] == "ghcr.io/acme/ss/cp:1.2.3" and cp["imagePullPolicy"] == "Always"
    assert container(objects, f"{FULL}-agent", "agent")["image"] == "ghcr.io/acme/ss/agent:1.2.3"
    job = objects[("Job", f"{FULL}-migrate")]["spec"]["template"]["spec"]
    assert {c["image"] for c in job["initContainers"] + job["containers"]} == {cp["image"]}
    default_cp = container(rendered["default"], FULL, "control-plane")
    assert default_cp["image"] == "streamspace/control-plane:0.1.0"

    two = rendered["two-replicas"]
    deployment = two[("Deployment", FULL)]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = two[("PodDisruptionBudget", FULL)]
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] == 1
    assert ("PodDisruptionBudget", FULL) not in rendered["default"]
    # Every replica reads the same Secrets: nothing per pod that replicas must agree on.
    env = env_of(container(two, FULL, "control-plane"))
    assert "secretKeyRef" in env["JWT_SECRET"] and "secretKeyRef" in env["ADMIN_PASSWORD"]


def test_service_monitor_scrapes_the_control_plane_metrics(rendered):
    monitor = rendered["service-monitor"][("ServiceMonitor", FULL)]
    service = rendered["service-monitor"][("Service", FULL)]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["spec"]["selector"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics",
                                             "interval": "30s"}]
    # /metrics is off on the public port outside dev mode: the pods serve it on its own
    # listener, which the Service names and the Ingress never routes to
    [pod] = service_pods = [o["spec"]["template"]["spec"] for (kind, name), o in
                            rendered["service-monitor"].items()
                            if kind == "Deployment" and name == FULL]
    assert service_pods
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["METRICS_ADDRESS"] == "0.0.0.0:9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"} in \
        service["spec"]["ports"]
    ingress = [o for (kind, _), o in rendered["ingress"].items() if kind == "Ingress"]
    assert ingress and "metrics" not in json.dumps(ingress)
    assert not [k for k in rendered["default"] if k[0] == "ServiceMonitor"]


def _secret_data(objects: dict) -> dict:
    return {name: o["data"] for (kind, name), o in objects.items() if kind == "Secret"}


def test_secrets_are_generated_once_and_kept_on_upgrade(helm):
    first = _secret_data(render(helm, []))
    second = _secret_data(render(helm, []))
    for name in (f"{FULL}-jwt", f"{FULL}-admin-credentials", f"{FULL}-db", f"{FULL}-agent-token"):
        for key, value in first[name].items():
            if key != "username":
                assert len(base64.b64decode(value)) >= 32
                assert second[name][key] != value  # fresh installs get fresh secrets
    # An upgrade: the cluster already holds the first install's Secrets (what `lookup`
    # returns there); every generated value is kept.
    upgraded = _secret_data(render(helm, [], extra=("--set-json",
                                                    "_lookupOverride=" + json.dumps(first))))
    assert upgraded == first
    # An explicit value wins over what is kept.
    explicit = _secret_data(render(helm, ["adminPassword=chosen-by-the-operator"], extra=(
        "--set-json", "_lookupOverride=" + json.dumps(first))))
    assert base64.b64decode(explicit[f"{FULL}-admin-credentials"]["password"]) == \
        b"chosen-by-the-operator"
    assert explicit[f"{FULL}-jwt"] == first[f"{FULL}-jwt"]


def test_notes_tell_the_admin_password_and_the_url(helm):
    out = helm_run(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "--dry-run=client", "--set", "ingress.enabled=true").stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"kubectl get secret {FULL}-admin-credentials -n {NAMESPACE}" in notes
    assert "{.data.password}" in notes and "https://" not in notes.split("2. The URL:")[0]
    assert "http://streamspace.example.com" in notes


def _documented_values() -> tuple[set[str], dict]:
    """Dotted paths of values.yaml keys with a `# --` comment (documented as a whole)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented, stack = set(), []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            if lines[j].strip().startswith("# --"):
                documented.add(".".join(stack))
                break
            j -= 1
    return documented, yaml.safe_load("\n".join(lines))


def test_every_value_is_documented_in_values_yaml_and_the_readme():
    documented, values = _documented_values()
    undocumented = []

    def walk(node, path):
        if path and ".".join(path) in documented:
            return
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, [*path, key])
        else:
            undocumented.append(".".join(path))

    walk(values, [])
    assert not undocumented, f"values without a '# --' comment: {undocumented}"
    readme = (REPO / "deploy" / "README.md").read_text()
    missing = sorted(p for p in documented if f"`{p}`" not in readme and
                     not p.startswith("_"))
    assert not missing, f"values not in deploy/README.md: {missing}"


def test_plain_manifests_are_current(helm):
    result = subprocess.run([sys.executable, str(REPO / "deploy/manifests/generate.py"), "--helm",
                             str(helm), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    manifests = [o for o in yaml.safe_load_all(
        (REPO / "deploy/manifests/streamspace.yaml").read_text()) if o]
    assert not [o for o in manifests if o["kind"] == "Secret"]  # never secrets in git
    for obj in manifests:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)
