"""Agent configuration: `twistd agent` options with the seed's env fallbacks."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from agent.platforms import DRIVERS
from streamspace_common.settings import (
    Setting,
    build_options_class,
    log_level,
    non_negative_float,
    non_negative_int,
    one_of,
    positive_duration,
)

PLATFORMS = tuple(DRIVERS)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def quantity(text: str) -> str:
    value = str(text).strip()
    if not _QUANTITY.match(value):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (examples: 5Gi, 500Mi)")
    return value



def absolute_paths(text: str) -> tuple[str, ...]:
    """A colon-separated list of absolute paths (empty: none)."""
    paths = tuple(p for p in str(text).split(":") if p.strip())
    relative = [p for p in paths if not os.path.isabs(p)]
    if relative:
        raise ValueError(f"not absolute: {', '.join(relative)}")
    return paths


SETTINGS: list[Setting] = [
    Setting("agent-id", "AGENT_ID", None, "unique agent identifier (required)"),
    Setting("control-plane-url", "CONTROL_PLANE_URL", None,
            "control plane URL, ws(s)://host[:port] or http(s)://host[:port] (required)"),
    Setting("agent-token", "AGENT_TOKEN", None,
            "this agent's token, issued by an admin (POST /api/v1/agents)", secret=True),
    Setting("agent-token-file", "AGENT_TOKEN_FILE", None,
            "file holding the agent token (instead of AGENT_TOKEN)"),
    Setting("control-plane-ca-file", "CONTROL_PLANE_CA_FILE", None,
            "PEM CA certificate to trust for a wss:// control plane (default: system CAs)"),
    Setting("platform", "PLATFORM", "local", f"platform driver: {', '.join(PLATFORMS)}",
            one_of(*PLATFORMS)),
    Setting("region", "REGION", "", "deployment region reported to the scheduler"),
    Setting("namespace", "NAMESPACE", "streamspace", "Kubernetes namespace for session pods"),
    Setting("kube-config-source", "KUBE_CONFIG_SOURCE", "auto",
            "kubernetes: in-cluster (service account), kubeconfig, or auto (in-cluster "
            "inside a pod unless KUBECONFIG is set)", one_of("auto", "in-cluster", "kubeconfig")),
    Setting("kubeconfig", "KUBECONFIG", "", "kubernetes: kubeconfig file (default "
            "~/.kube/config)"),
    Setting("kube-context", "KUBE_CONTEXT", "", "kubernetes: kubeconfig context (default: "
            "its current context)"),
    Setting("kube-service-account-dir", "KUBE_SERVICE_ACCOUNT_DIR",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "kubernetes: where the in-cluster token and ca.crt are mounted"),
    Setting("kube-vnc-mode", "KUBE_VNC_MODE", "auto",
            "kubernetes: reach session VNC through the Service (agent in the cluster), the "
            "API server's port-forward (agent outside), or auto",
            one_of("auto", "service", "port-forward")),
    Setting("kube-storage-class", "KUBE_STORAGE_CLASS", "",
            "kubernetes: storage class of persistent homes (default: the cluster's)"),
    Setting("kube-home-size", "KUBE_HOME_SIZE", "5Gi",
            "kubernetes: size of a persistent home (a Kubernetes quantity)", quantity),
    Setting("kube-orphan-grace", "KUBE_ORPHAN_GRACE", "5m",
            "kubernetes: how long objects no session explains are kept before removal",
            positive_duration),
    Setting("kube-watch-timeout", "KUBE_WATCH_TIMEOUT", "60s",
            "kubernetes: server-side timeout of each watch (silence past it + 15 s restarts "
            "the watch)", positive_duration),
    Setting("kube-request-timeout", "KUBE_REQUEST_TIMEOUT", "30s",
            "kubernetes: deadline of one API request", positive_duration),
    Setting("max-cpu", "MAX_CPU", "0", "max CPU cores for sessions (0 = unlimited)",
            non_negative_float),
    Setting("max-memory", "MAX_MEMORY", "0", "max memory in GB for sessions (0 = unlimited)",
            non_negative_float),
    Setting("max-sessions", "MAX_SESSIONS", "0", "max concurrent sessions (0 = unlimited)",
            non_negative_int),
    Setting("heartbeat-interval", "HEARTBEAT_INTERVAL", "10s", "time between heartbeats",
            positive_duration),
    Setting("state-dir", "AGENT_STATE_DIR", "./.streamspace/agent",
            "directory for session homes and the executed-command journal"),
    Setting("log-level", "LOG_LEVEL", "info", "debug, info, warn or error", log_level),
    # PLATFORM=local (docs/agent.md, "The local driver")
    Setting("local-allow-unsandboxed", "LOCAL_ALLOW_UNSANDBOXED", "false",
            "true: where bubblewrap cannot make a sandbox (e.g. in a container) and the agent "
            "is not root, run local sessions anyway, unsandboxed, as the agent's own user. "
            "Sessions can then impersonate this agent: use only for one trusted user",
            one_of("true", "false")),
    Setting("local-hide-paths", "LOCAL_HIDE_PATHS", "",
            "colon-separated absolute paths sandboxes must not show where they bind a system "
            "directory (/usr, /etc, /opt); the agent's state directory and checkout always are",
            absolute_paths),
    # PLATFORM=docker (docs/docker.md)
    Setting("docker-host", "DOCKER_HOST", "unix:///var/run/docker.sock",
            "Docker engine of the docker platform: unix:///PATH or tcp://HOST:PORT"),
    Setting("docker-tls-verify", "DOCKER_TLS_VERIFY", "",
            "any value but 0: talk TLS to a tcp:// engine, verified with DOCKER_CERT_PATH"),
    Setting("docker-cert-path", "DOCKER_CERT_PATH", "",
            "directory of ca.pem, cert.pem and key.pem for DOCKER_TLS_VERIFY (~/.docker)"),
    Setting("docker-network", "DOCKER_NETWORK", "bridge",
            "network of session containers; host: the agent's network, each session's VNC "
            "server on its own 127.0.0.1 port"),
    Setting("docker-publish-vnc", "DOCKER_PUBLISH_VNC", "false",
            "true: publish each session's VNC port on a 127.0.0.1 host port and connect there",
            one_of("true", "false")),
    Setting("docker-pull", "DOCKER_PULL", "missing",
            "when to pull session images: missing, always or never",
            one_of("missing", "always", "never")),
    Setting("docker-purge-homes", "DOCKER_PURGE_HOMES", "on-request",
            "on-request: home volumes are deleted only by a stop with purge; always: at "
            "every stop", one_of("on-request", "always")),
]


def _validate(opts: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    if not opts["agent_id"]:
        problems.append("AGENT_ID: required")
    url = opts["control_plane_url"]
    if not url:
        problems.append("CONTROL_PLANE_URL: required (e.g. wss://streamspace.example.com)")
    else:
        p = urlparse(url)
        if p.scheme not in ("ws", "wss", "http", "https") or not p.hostname:
            problems.append("CONTROL_PLANE_URL: expected ws(s)://host[:port] or http(s)://...")
    ca = opts["control_plane_ca_file"]
    if ca and not os.path.isfile(ca):
        problems.append(f"CONTROL_PLANE_CA_FILE: {ca} is not a file")
    if not opts["agent_token"] and not opts["agent_token_file"]:
        problems.append("AGENT_TOKEN: required (or AGENT_TOKEN_FILE)")
    return problems


AgentOptions = build_options_class(
    SETTINGS,
    [],
    _validate,
    doc="Run a StreamSpace agent that connects out to the control plane.",
    program_name="agent",
)
