"""Names, specs and objects of Kubernetes sessions: valid whatever the input, strict-schema
valid for Kubernetes 1.30 and the newest version kubernetes-validate bundles."""

from __future__ import annotations

import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.platforms.base import DriverError, SessionTemplate, UserRef
from agent.platforms.kubernetes import names
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.kubernetes.spec import session_spec

VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SID = "3f2b8c1e-9d4a-4e6b-8f00-1234567890ab"
USER = UserRef("a1b2c3d4-0000-4000-8000-000000000001", "alice")


def template(**k8s_settings) -> SessionTemplate:
    return SessionTemplate.from_json({
        "name": "firefox-browser", "vnc_port": 5901, "cpu": 1.5, "memory_mb": 2048,
        "env": {"LANG": "C.UTF-8"}, "persistent_home": bool(k8s_settings.pop("home", False)),
        "platforms": {"kubernetes": {"image": "docker.io/example/firefox:1", **k8s_settings}}})


@given(st.text(max_size=300), st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_names_are_dns1123_labels_whatever_the_user_and_template(username, tmpl):
    name = names.session_name(SID, username, tmpl)
    assert names.DNS1123_LABEL.match(name) and len(name) <= names.MAX_WORKLOAD_NAME
    claim = names.home_claim_name("u1", username, tmpl)
    assert names.DNS1123_LABEL.match(claim) and len(claim) <= 63
    value = names.label_value(username)
    assert len(value) <= 63 and names.LABEL_VALUE.match(value)


def test_names_stay_readable_and_distinct():
    assert names.session_name(SID, "alice", "firefox") .startswith("ss-alice-firefox-")
    # kubespawner's old escaping made these collide; a hash of the unique part never does
    assert names.session_name("s1", "a.b", "t") != names.session_name("s2", "a.b", "t")
    assert names.home_claim_name("u1", "a-b", "t") != names.home_claim_name("u2", "a-b", "t")
    assert names.label_value("alice") == "alice"
    assert names.label_value("Alice Smith@x") != names.label_value("Alice_Smith@x")


@pytest.mark.parametrize("settings_", [
    {},
    {"home": True, "home_path": "/headless", "run_as_user": 1000},
    {"command": ["/dockerstartup/vnc_startup.sh"], "args": ["--wait"],
     "node_selector": {"kubernetes.io/arch": "amd64"},
     "tolerations": [{"key": "sessions", "operator": "Exists", "effect": "NoSchedule"}],
     "image_pull_secrets": ["registry-creds"], "image_pull_policy": "IfNotPresent",
     "env": {"VNC_PASSWORDLESS": "true"}, "vnc_port": 5902},
])
def test_objects_validate_strictly(settings_):
    spec = session_spec(SID, template(**settings_), USER, "my session ✨")
    built = [k8s.deployment(spec, "streamspace", "agent-1"),
             k8s.service(spec, "streamspace", "agent-1")]
    if spec.persistent_home:
        built.append(k8s.home_claim(spec, "streamspace", "agent-1", "5Gi", "fast"))
    for obj in built:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    dep = built[0]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port = settings_.get("vnc_port", 5901)
    assert built[1]["spec"]["ports"][0]["port"] == port
    assert pod["spec"]["containers"][0]["ports"][0]["containerPort"] == port


def test_the_pod_never_runs_privileged_or_with_the_service_account_token():
    dep = k8s.deployment(session_spec(SID, template(), USER), "ns", "agent")
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "privileged": False,
                  "capabilities": {"drop": ["ALL"]}}
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "1500m", "memory": "2048Mi"},
        "limits": {"cpu": "1500m", "memory": "2048Mi"}}


@pytest.mark.parametrize(("settings_", "message"), [
    ({"image": ""}, "has no platforms.kubernetes.image"),
    ({"command": "sh -c x"}, "command must be a list of strings"),
    ({"run_as_user": 0}, "never run as root"),
    ({"image_pull_policy": "Sometimes"}, "image_pull_policy must be one of"),
    ({"tolerations": [{"key": "a", "bogus": 1}]}, "unknown fields: bogus"),
    ({"home_path": "relative"}, "absolute path"),
])
def test_bad_templates_fail_with_a_sentence(settings_, message):
    with pytest.raises(DriverError, match=message):
        session_spec(SID, template(**settings_), USER)


def test_a_template_without_a_vnc_port_is_refused():
    t = SessionTemplate.from_json({"name": "x", "platforms": {"kubernetes": {"image": "i"}}})
    with pytest.raises(DriverError, match="no valid VNC port"):
        session_spec(SID, t, USER)


def test_every_catalog_template_runs_on_kubernetes():
    """The shipped catalog: each kubernetes entry makes objects that validate strictly."""
    import json
    from pathlib import Path

    catalog = json.loads((Path(__file__).resolve().parents[4] / "catalog" / "templates.json")
                         .read_text())
    entries = [t for t in catalog["templates"] if "kubernetes" in t.get("platforms", {})]
    assert entries
    for entry in entries:
        spec = session_spec(SID, SessionTemplate.from_json(entry), USER)
        for obj in (k8s.deployment(spec, "streamspace", "agent"),
                    k8s.service(spec, "streamspace", "agent")):
            kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
        assert spec.vnc_port == entry["vnc_port"]
