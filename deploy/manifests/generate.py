#!/usr/bin/env python3
"""Regenerate the plain manifests from the Helm chart (default values).

    .venv/bin/python deploy/manifests/generate.py [--helm PATH] [--check]

Everything is the chart rendered for release "streamspace" in namespace "streamspace":
- deploy/manifests/streamspace.yaml: the whole install, without what only Helm can do: the
  generated Secrets (create them yourself, see deploy/README.md) and the hook annotations
  (the migration Job simply runs, retrying until the database is up);
- deploy/kubernetes/: the Kubernetes agent's part alone, for an agent you run yourself:
  the sessions' namespace, the agent's ServiceAccount, Role and RoleBinding, and the
  sessions' NetworkPolicy. The chart is their one source, so the Role the driver's tests
  enforce (tests/integration/agent/kubernetes/test_manifests.py) is the chart's.
`--check` exits 1 if a committed file is not current (the test suite runs the same
comparison).
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
RELEASE = NAMESPACE = "streamspace"
KIND_ORDER = ["Namespace", "ServiceAccount", "Role", "RoleBinding", "Service", "StatefulSet",
              "Job", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "Ingress"]
GENERATED = "# GENERATED from deploy/helm/streamspace by deploy/manifests/generate.py: do not edit.\n"
MANIFESTS = """\
# StreamSpace as plain Kubernetes manifests: `kubectl apply -n streamspace -f this file`.
{generated}\
# Create the Secrets first (deploy/README.md, "Plain manifests"): streamspace-jwt,
# streamspace-admin-credentials, streamspace-db and streamspace-agent-token.
"""
AGENT_PART = """\
# {what}
# as the Helm chart makes them for release "streamspace" in namespace "streamspace",
# sessions in "streamspace-sessions" (docs/kubernetes.md; the chart's
# templates/{template} says why each part is there).
{generated}\
# Other namespaces: helm template streamspace deploy/helm/streamspace -n <agent's namespace>
#   --set k8sAgent.config.namespace=<sessions' namespace> --show-only templates/{template}
"""
AGENT_FILES = {
    # file: (kinds, what it holds, the chart template)
    "kubernetes/namespace.yaml": (("Namespace",), "The sessions' namespace,",
                                  "sessions-namespace.yaml"),
    "kubernetes/rbac.yaml": (("ServiceAccount", "Role", "RoleBinding"),
                             "The Kubernetes agent's ServiceAccount, Role and RoleBinding,",
                             "agent-rbac.yaml"),
    "kubernetes/networkpolicy.yaml": (("NetworkPolicy",), "Only the agent reaches a session's "
                                      "VNC port: the sessions' NetworkPolicy,",
                                      "network-policies.yaml"),
}


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


def _dump(objects: list[dict]) -> str:
    objects = sorted(objects, key=lambda o: (KIND_ORDER.index(o["kind"]),
                                             o["metadata"]["name"]))
    return "---\n" + "---\n".join(yaml.safe_dump(_strip_helm(o), sort_keys=False)
                                  for o in objects)


def render(helm: str) -> dict[str, str]:
    """Each generated file (path under deploy/) and its text."""
    out = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE],
                         capture_output=True, text=True, check=True).stdout
    objects = [o for o in yaml.safe_load_all(out) if o and o["kind"] != "Secret"]
    files = {"manifests/streamspace.yaml": MANIFESTS.format(generated=GENERATED)
             + _dump(objects)}
    for path, (kinds, what, template) in AGENT_FILES.items():
        part = [o for o in objects if o["kind"] in kinds
                and (o["kind"] != "NetworkPolicy" or o["metadata"]["name"].endswith("-sessions"))]
        files[path] = AGENT_PART.format(what=what, generated=GENERATED,
                                        template=template) + _dump(part)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--helm", default=None, help="helm binary (default: PATH, else the "
                        "test suite's cached one)")
    parser.add_argument("--check", action="store_true", help="only check the files are current")
    args = parser.parse_args()
    files = render(args.helm or find_helm())
    deploy = REPO / "deploy"
    if args.check:
        stale = [p for p, text in files.items()
                 if not (deploy / p).exists() or (deploy / p).read_text() != text]
        print(f"stale: {', '.join('deploy/' + p for p in stale)}; run .venv/bin/python "
              "deploy/manifests/generate.py" if stale else "deploy/manifests and "
              "deploy/kubernetes are current")
        return 1 if stale else 0
    for path, text in files.items():
        (deploy / path).write_text(text)
        print(f"wrote deploy/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
