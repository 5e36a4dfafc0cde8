"""Reading a session's pods, Deployment and Events: ready, failing (and why), progress.

Facts from the Kubernetes API (see docs/kubernetes.md):
- ready: phase Running, a pod IP, no deletionTimestamp, every container ready;
- why a pod does not start: `status.containerStatuses[].state.waiting.reason` with its
  message (ErrImagePull, ImagePullBackOff, InvalidImageName, CrashLoopBackOff,
  CreateContainerConfigError...), the PodScheduled condition False/Unschedulable with the
  scheduler's message, Events naming the pod (Failed, FailedScheduling, BackOff);
- quota and admission refusals of the pods a Deployment wants surface as the Deployment's
  `ReplicaFailure` condition (copied from its ReplicaSet's FailedCreate).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                 "ErrImageNeverPull", "RegistryUnavailable")
CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError",
                   "RunContainerError")


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return _status(obj).get("conditions") or []


def deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def pod_ready(pod: dict[str, Any]) -> bool:
    status = _status(pod)
    if deleting(pod) or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    containers = status.get("containerStatuses") or []
    return bool(containers) and all(c.get("ready") for c in containers)


def _image_of(pod: dict[str, Any], container: str) -> str:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return str(c.get("image") or "")
    return ""


def pod_failure(pod: dict[str, Any], events: Iterable[dict[str, Any]] = ()) -> str | None:
    """A sentence saying why this pod cannot become ready, or None while it still may."""
    if deleting(pod):
        return None
    events = list(events)
    for cond in _conditions(pod):
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            return f"no node can run the session: {cond.get('message') or 'unschedulable'}"
    for c in _status(pod).get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        reason, message = waiting.get("reason") or "", waiting.get("message") or ""
        image = _image_of(pod, c.get("name") or "") or c.get("image") or ""
        if reason in PULL_FAILURES:
            # ErrImagePull's message and the kubelet's "Failed to pull image" event carry
            # the registry's message; ImagePullBackOff's is only "Back-off pulling image".
            pulled = _last_event(events, "Failed", "failed to pull image")
            detail = (message if reason == "ErrImagePull" and message else pulled
                      or message or reason)
            return f"the image {image} cannot be pulled ({reason}): {detail}"
        if reason == "CrashLoopBackOff":
            last = (c.get("lastState") or {}).get("terminated") or {}
            how = ""
            if last:
                # the kubelet's reason "Error" only says the exit code was not 0
                told = last.get("reason") if last.get("reason") != "Error" else ""
                how = f" (exit code {last.get('exitCode')}"
                how += f", {told})" if told else ")"
            output = f"; last message: {last['message']}" if last.get("message") else ""
            return (f"the session's container keeps crashing{how}: "
                    f"{message or 'back-off restarting failed container'}{output}")
        if reason in CONFIG_FAILURES:
            return f"the session's container cannot start ({reason}): {message or reason}"
    phase = _status(pod).get("phase")
    if phase in ("Failed", "Succeeded"):
        why = _status(pod).get("message") or _status(pod).get("reason") or phase
        return f"the session's pod ended ({phase}): {why}"
    return None


def deployment_failure(deployment: dict[str, Any]) -> str | None:
    """Quota or admission refused the Deployment's pods (its ReplicaFailure condition)."""
    for cond in _conditions(deployment):
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return ("the cluster refused to create the session's pod: "
                    f"{cond.get('message') or cond.get('reason') or 'ReplicaFailure'}")
    return None


def _last_event(events: list[dict[str, Any]], reason: str, contains: str = "") -> str:
    for event in reversed(events):
        message = str(event.get("message") or "")
        if event.get("reason") == reason and contains.lower() in message.lower():
            return message
    return ""


def progress(pod: dict[str, Any], events: Iterable[dict[str, Any]]) -> list[str]:
    """Sentences for a user waiting on a start, in the order things happened."""
    out: list[str] = []
    node = (pod.get("spec") or {}).get("nodeName")
    scheduled = any(c.get("type") == "PodScheduled" and c.get("status") == "True"
                    for c in _conditions(pod))
    if scheduled and node:
        out.append(f"scheduled on node {node}")
    for event in events:
        reason, message = event.get("reason"), str(event.get("message") or "")
        if reason == "Pulling":
            out.append(message.replace("Pulling image", "pulling image", 1))
        elif reason == "Pulled":
            out.append(message.replace("Successfully pulled image", "pulled image", 1)
                       .replace("Container image", "image", 1))
        elif reason == "Started":
            out.append("the session's container started; waiting for its VNC server")
    if pod_ready(pod):
        out.append("the session's VNC server accepts connections")
    return out


def event_subject(event: dict[str, Any]) -> tuple[str, str]:
    """(kind, name) of the object an Event is about."""
    involved = event.get("involvedObject") or event.get("regarding") or {}
    return str(involved.get("kind") or ""), str(involved.get("name") or "")
