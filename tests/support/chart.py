"""The Helm chart as tests see it: rendered by the real `helm` (tests/support/
k8s_binaries.py), objects keyed by (kind, name), and the environment a pod of it would
get, with its Secret references resolved from the rendered Secrets and its mounted Secrets
written under a directory that stands for the pod's filesystem."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import REPO

CHART = REPO / "deploy" / "helm" / "streamspace"
RELEASE, NAMESPACE = "ss", "streamspace"
FULL = f"{RELEASE}-streamspace"


def helm_run(helm_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(helm_bin: Path, sets: list[str], kube: str = "1.30.0", extra: tuple = (),
           release: str = RELEASE, namespace: str = NAMESPACE) -> dict:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube]
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


def pod_spec(objects: dict, kind: str, name: str) -> dict:
    return objects[(kind, name)]["spec"]["template"]["spec"]


def container(objects: dict, deployment: str, name: str, kind: str = "Deployment") -> dict:
    spec = pod_spec(objects, kind, deployment)
    return next(c for c in spec.get("initContainers", []) + spec["containers"]
                if c["name"] == name)


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def _secret_value(objects: dict, ref: dict[str, str], outside: dict[str, dict]) -> str:
    secret = objects.get(("Secret", ref["name"]))
    if secret is None:  # an existing Secret the operator made
        return outside[ref["name"]][ref["key"]]
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def pod_environment(objects: dict, kind: str, name: str, container_name: str, root: Path,
                    fields: dict[str, str] | None = None,
                    outside: dict[str, dict] | None = None) -> dict[str, str]:
    """The environment `container_name` of that workload gets from the kubelet: values,
    Secret keys (from the rendered Secrets, else `outside[name][key]`), field refs from
    `fields`; each Secret volume it mounts is written under `root` (paths in the env that
    name a mount are moved there too)."""
    spec = pod_spec(objects, kind, name)
    c = container(objects, name, container_name, kind)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, str] = {}
    for mount in c.get("volumeMounts", []):
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = str(target)
        secret = volumes[mount["name"]].get("secret")
        if secret:
            data = objects[("Secret", secret["secretName"])]["data"]
            for key, value in data.items():
                (target / key).write_bytes(base64.b64decode(value))
    env: dict[str, str] = {}
    for entry in c.get("env", []):
        value: Any = entry.get("value")
        source = entry.get("valueFrom") or {}
        if "secretKeyRef" in source:
            value = _secret_value(objects, source["secretKeyRef"], outside or {})
        elif "fieldRef" in source:
            value = (fields or {})[source["fieldRef"]["fieldPath"]]
        value = "" if value is None else str(value)
        for path, moved in mounts.items():
            if value == path or value.startswith(path + "/"):
                value = moved + value[len(path):]
        env[entry["name"]] = value
    return env
