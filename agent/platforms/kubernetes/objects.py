"""The Kubernetes objects of a session (all the JSON the driver sends is built here).

Per session: a Deployment of one replica (Recreate, so a persistent home is never mounted
twice), a ClusterIP Service for the template's VNC port, and for templates with a
persistent home a PVC per user and template. Every object carries the labels
`app.kubernetes.io/managed-by=streamspace`, `streamspace.io/session|user|template|agent`,
so the agent finds its sessions again by label after a restart; what a label value cannot
hold exactly (a username, the session's name) goes into annotations.
"""

from __future__ import annotations

from typing import Any

from agent.platforms.kubernetes import names
from agent.platforms.kubernetes.spec import SessionSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
SESSION = "streamspace.io/session"
USER = "streamspace.io/user"
TEMPLATE = "streamspace.io/template"
AGENT = "streamspace.io/agent"
MANAGER = "streamspace"

A_USERNAME = "streamspace.io/username"
A_USER_ID = "streamspace.io/user-id"
A_TEMPLATE = "streamspace.io/template-name"
A_NAME = "streamspace.io/session-name"
A_CPU = "streamspace.io/cpu"
A_MEMORY = "streamspace.io/memory-mb"
A_CLAIM = "streamspace.io/home-claim"
A_VNC_PORT = "streamspace.io/vnc-port"

CONTAINER = "session"
VNC_PORT_NAME = "vnc"
HOME_VOLUME = "home"


def agent_selector(agent_id: str) -> str:
    """The label selector of everything this agent manages (its watches use it)."""
    return f"{MANAGED_BY}={MANAGER},{AGENT}={names.label_value(agent_id)}"


def _labels(spec: SessionSpec, agent_id: str, component: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, COMPONENT: component,
            SESSION: names.label_value(spec.session_id),
            USER: names.label_value(spec.user.id),
            TEMPLATE: names.label_value(spec.template),
            AGENT: names.label_value(agent_id)}


def _annotations(spec: SessionSpec) -> dict[str, str]:
    return {A_USERNAME: spec.user.username, A_USER_ID: spec.user.id,
            A_TEMPLATE: spec.template, A_NAME: spec.name}


def _selector(spec: SessionSpec) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, SESSION: names.label_value(spec.session_id)}


def _quantity_cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def _resources(spec: SessionSpec) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if spec.cpu > 0:
        amounts["cpu"] = _quantity_cpu(spec.cpu)
    if spec.memory_mb > 0:
        amounts["memory"] = f"{spec.memory_mb}Mi"
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _env(spec: SessionSpec) -> list[dict[str, str]]:
    env = dict(spec.env)
    env.update({"STREAMSPACE_SESSION_ID": spec.session_id,
                "STREAMSPACE_USER": spec.user.username,
                "STREAMSPACE_SESSION_NAME": spec.name})
    return [{"name": k, "value": v} for k, v in env.items()]


def deployment(spec: SessionSpec, namespace: str, agent_id: str,
               replicas: int = 1) -> dict[str, Any]:
    labels = _labels(spec, agent_id, "session")
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "env": _env(spec),
        "ports": [{"name": VNC_PORT_NAME, "containerPort": spec.vnc_port, "protocol": "TCP"}],
        # Ready means the VNC port accepts connections; the driver then checks RFB itself.
        "readinessProbe": {"tcpSocket": {"port": VNC_PORT_NAME}, "periodSeconds": 2,
                           "timeoutSeconds": 1, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_security: dict[str, Any] = {"runAsNonRoot": True,
                                    "seccompProfile": {"type": "RuntimeDefault"}}
    if spec.run_as_user is not None:
        pod_security["runAsUser"] = spec.run_as_user
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "terminationGracePeriodSeconds": 10,
        "containers": [container],
    }
    annotations = _annotations(spec)
    annotations.update({A_CPU: f"{spec.cpu:g}", A_MEMORY: str(spec.memory_mb),
                        A_VNC_PORT: str(spec.vnc_port)})
    if spec.persistent_home:
        pod["securityContext"]["fsGroup"] = spec.run_as_user or 1000
        container["volumeMounts"] = [{"name": HOME_VOLUME, "mountPath": spec.home_path}]
        pod["volumes"] = [{"name": HOME_VOLUME,
                           "persistentVolumeClaim": {"claimName": spec.claim_name}}]
        annotations[A_CLAIM] = spec.claim_name
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": spec.object_name, "namespace": namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(spec)},
            "template": {"metadata": {"labels": labels,
                                      "annotations": _annotations(spec)},
                         "spec": pod},
        },
    }


def service(spec: SessionSpec, namespace: str, agent_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": spec.object_name, "namespace": namespace,
                     "labels": _labels(spec, agent_id, "session"),
                     "annotations": _annotations(spec)},
        "spec": {"type": "ClusterIP", "selector": _selector(spec),
                 "ports": [{"name": VNC_PORT_NAME, "port": spec.vnc_port,
                            "targetPort": VNC_PORT_NAME, "protocol": "TCP"}]},
    }


def home_claim(spec: SessionSpec, namespace: str, agent_id: str, size: str,
               storage_class: str = "") -> dict[str, Any]:
    labels = _labels(spec, agent_id, "home")
    del labels[SESSION]  # a home outlives its sessions
    claim: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": spec.claim_name, "namespace": namespace, "labels": labels,
                     "annotations": {A_USERNAME: spec.user.username, A_USER_ID: spec.user.id,
                                     A_TEMPLATE: spec.template}},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": size}}},
    }
    if storage_class:
        claim["spec"]["storageClassName"] = storage_class
    return claim


def replicas_patch(replicas: int) -> dict[str, Any]:
    """A JSON merge patch (application/merge-patch+json) that scales a Deployment."""
    return {"spec": {"replicas": replicas}}


DELETE_IN_BACKGROUND = {"kind": "DeleteOptions", "apiVersion": "v1",
                        "propagationPolicy": "Background"}


# -- reading objects back -------------------------------------------------------------------


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def name_of(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name") or ""


def session_of(obj: dict[str, Any]) -> str | None:
    return labels_of(obj).get(SESSION)


def replicas_of(deployment_obj: dict[str, Any]) -> int:
    replicas = (deployment_obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def reserved(deployment_obj: dict[str, Any]) -> tuple[float, int]:
    """(cpu cores, memory MB) the session's template reserves, from its annotations."""
    notes = annotations_of(deployment_obj)
    try:
        return float(notes.get(A_CPU) or 0), int(notes.get(A_MEMORY) or 0)
    except ValueError:
        return 0.0, 0


def vnc_port_of(obj: dict[str, Any]) -> int | None:
    """The VNC port of a session's Service (spec.ports named vnc)."""
    for port in (obj.get("spec") or {}).get("ports") or []:
        if port.get("name") == VNC_PORT_NAME:
            return int(port["port"])
    return None


def container_vnc_port(pod: dict[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == VNC_PORT_NAME:
                return int(port["containerPort"])
    return None
