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

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from tests.integration.deploy.chart_variants import PROXIES, VARIANTS
from tests.support.chart import (
    CHART,
    FULL,
    NAMESPACE,
    RELEASE,
    container,
    env_of,
    helm_run,
    render,
)
from tests.support.processes import REPO

KUBE_VERSIONS = ("1.30.0", latest_version())
# Kinds that come from CRDs: no bundled schema to validate against (asserted on instead).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
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
                "adminPassword=short", "k8sAgent.token=short", "metrics.token.enable=true",
                "networkPolicy.vncPortStart=5900", "metrics.monitoringNamespace=Not_A_Name"):
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
                                               "Namespace")]
    assert {name for kind, name in objects if kind == "NetworkPolicy"} == {
        f"{FULL}-postgresql", f"{FULL}-control-plane"}


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


def _secret_data(objects: dict) -> dict:
    return {name: o["data"] for (kind, name), o in objects.items() if kind == "Secret"}


def test_secrets_are_generated_once_and_kept_on_upgrade(helm):
    sets = ["metrics.token.enabled=true"]
    first = _secret_data(render(helm, sets))
    second = _secret_data(render(helm, sets))
    generated = (f"{FULL}-jwt", f"{FULL}-admin-credentials", f"{FULL}-db", f"{FULL}-agent-token",
                 f"{FULL}-metrics")
    assert set(first) == set(generated)
    for name in generated:
        for key, value in first[name].items():
            if key != "username":
                assert len(base64.b64decode(value)) >= 32
                assert second[name][key] != value  # fresh installs get fresh secrets
    # An upgrade: the cluster already holds the first install's Secrets (what `lookup`
    # returns there); every generated value is kept.
    upgraded = _secret_data(render(helm, sets, extra=("--set-json",
                                                      "_lookupOverride=" + json.dumps(first))))
    assert upgraded == first
    # An explicit value wins over what is kept (what `helm template` and GitOps users set,
    # since `lookup` sees nothing there).
    token = "t" * 40
    explicit = _secret_data(render(helm, ["adminPassword=chosen-by-the-operator",
                                          f"k8sAgent.token={token}"], extra=(
        "--set-json", "_lookupOverride=" + json.dumps(first))))
    assert base64.b64decode(explicit[f"{FULL}-admin-credentials"]["password"]) == \
        b"chosen-by-the-operator"
    assert base64.b64decode(explicit[f"{FULL}-agent-token"]["token"]) == token.encode()
    assert explicit[f"{FULL}-jwt"] == first[f"{FULL}-jwt"]


def test_notes_tell_the_admin_password_and_the_url(helm):
    out = helm_run(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "--dry-run=client", "--set", "ingress.enabled=true", "--set",
                   PROXIES).stdout
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
