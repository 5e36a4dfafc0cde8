#!/usr/bin/env python3
"""Regenerate deploy/manifests/streamspace.yaml from the Helm chart (default values).

    .venv/bin/python deploy/manifests/generate.py [--helm PATH] [--check]

The plain manifests are the chart rendered for release "streamspace" in namespace
"streamspace", without what only Helm can do: the generated Secrets (create them yourself,
see deploy/README.md) and the hook annotations (the migration Job simply runs, retrying
until the database is up). `--check` exits 1 if the committed file is not current (the test
suite runs the same comparison).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "streamspace"
OUTPUT = REPO / "deploy" / "manifests" / "streamspace.yaml"
RELEASE = NAMESPACE = "streamspace"
KIND_ORDER = ["ServiceAccount", "Role", "RoleBinding", "Service", "StatefulSet", "Job",
              "Deployment", "PodDisruptionBudget", "NetworkPolicy", "Ingress"]
HEADER = """\
# StreamSpace as plain Kubernetes manifests: `kubectl apply -n streamspace -f this file`.
# GENERATED from deploy/helm/streamspace by deploy/manifests/generate.py: do not edit.
# Create the Secrets first (deploy/README.md, "Plain manifests"): streamspace-jwt,
# streamspace-admin-credentials, streamspace-db and streamspace-agent-token.
"""


def find_helm() -> str:
    found = shutil.which("helm")
    if found:
        return found
    sys.path.insert(0, str(REPO))
    from tests.support.k8s_binaries import k8s_binary  # the test suite's cached binary

    return str(k8s_binary("helm"))


def _strip_helm(obj: dict) -> dict:
    meta = obj.get("metadata", {})
    labels = meta.get("labels", {})
    labels.pop("helm.sh/chart", None)
    if labels.get("app.kubernetes.io/managed-by") == "Helm":
        labels.pop("app.kubernetes.io/managed-by")
    annotations = {k: v for k, v in meta.get("annotations", {}).items()
                   if not k.startswith("helm.sh/")}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return obj


def render(helm: str) -> str:
    out = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE],
                         capture_output=True, text=True, check=True).stdout
    objects = [o for o in yaml.safe_load_all(out) if o and o["kind"] != "Secret"]
    objects.sort(key=lambda o: (KIND_ORDER.index(o["kind"]), o["metadata"]["name"]))
    body = "---\n".join(yaml.safe_dump(_strip_helm(o), sort_keys=False) for o in objects)
    return HEADER + "---\n" + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--helm", default=None, help="helm binary (default: PATH, else the "
                        "test suite's cached one)")
    parser.add_argument("--check", action="store_true", help="only check the file is current")
    args = parser.parse_args()
    text = render(args.helm or find_helm())
    if args.check:
        current = OUTPUT.exists() and OUTPUT.read_text() == text
        print("deploy/manifests are current" if current else
              "deploy/manifests are stale: run .venv/bin/python deploy/manifests/generate.py")
        return 0 if current else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
