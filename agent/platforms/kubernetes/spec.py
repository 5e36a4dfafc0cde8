"""What one session needs from the cluster, read from its template and checked up front.

A template's `platforms.kubernetes` settings (all optional but `image`):

    image               the container image (must serve VNC on the VNC port)
    vnc_port            overrides the template's `vnc_port`
    env                 extra environment (on top of the template's `env`)
    command, args       the container's command and arguments (lists of strings)
    node_selector       {label: value}
    tolerations         a list of Kubernetes tolerations (passed as they are)
    image_pull_secrets  names of Secrets in the namespace
    image_pull_policy   Always, IfNotPresent or Never
    home_path           where a persistent home is mounted (default /home/streamspace)
    run_as_user         the UID the session runs as (never 0)

Problems are `DriverError`s naming the setting, so a broken template fails with a sentence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.platforms.base import DriverError, SessionTemplate, UserRef
from agent.platforms.kubernetes import names

DEFAULT_HOME_PATH = "/home/streamspace"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    user: UserRef
    template: str
    display_name: str
    image: str
    vnc_port: int
    cpu: float
    memory_mb: int
    env: Mapping[str, str]
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)
    image_pull_policy: str = ""
    persistent_home: bool = False
    home_path: str = DEFAULT_HOME_PATH
    run_as_user: int | None = None
    name: str = ""  # the session's name as the user gave it

    @property
    def object_name(self) -> str:
        return names.session_name(self.session_id, self.user.username or self.user.id,
                                  self.template)

    @property
    def claim_name(self) -> str:
        return names.home_claim_name(self.user.id, self.user.username or self.user.id,
                                     self.template)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list) or not all(
            isinstance(v, str) for v in value):
        raise DriverError(f"the template's {what} must be a list of strings")
    return list(value)


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DriverError(f"the template's {what} must be an object of strings")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise DriverError(f"the template's {what} has an invalid key {key!r}")
        out[key] = item if isinstance(item, str) else str(item)
    return out


def _tolerations(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise DriverError("the template's platforms.kubernetes.tolerations must be a list "
                          "of objects")
    for t in value:
        unknown = set(t) - TOLERATION_KEYS
        if unknown:
            raise DriverError(f"a toleration has unknown fields: {', '.join(sorted(unknown))}")
    return [dict(t) for t in value]


def session_spec(session_id: str, template: SessionTemplate, user: UserRef,
                 name: str = "") -> SessionSpec:
    """The session's spec from its template, or a DriverError saying what is wrong."""
    k8s = template.platform("kubernetes")
    image = k8s.get("image")
    if not isinstance(image, str) or not image.strip():
        raise DriverError(f"template {template.name!r} cannot run on Kubernetes (it has no "
                          "platforms.kubernetes.image)")
    port = k8s.get("vnc_port") or template.vnc_port
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise DriverError(f"template {template.name!r} has no valid VNC port (vnc_port or "
                          "platforms.kubernetes.vnc_port)")
    env = dict(template.env)
    env.update(_string_map(k8s.get("env"), "platforms.kubernetes.env"))
    policy = k8s.get("image_pull_policy") or ""
    if policy and policy not in PULL_POLICIES:
        raise DriverError(f"the template's image_pull_policy must be one of "
                          f"{', '.join(PULL_POLICIES)}")
    home_path = k8s.get("home_path") or DEFAULT_HOME_PATH
    if not isinstance(home_path, str) or not home_path.startswith("/"):
        raise DriverError("the template's platforms.kubernetes.home_path must be an "
                          "absolute path")
    run_as = k8s.get("run_as_user")
    if run_as is not None and (not isinstance(run_as, int) or isinstance(run_as, bool)
                               or run_as <= 0):
        raise DriverError("the template's platforms.kubernetes.run_as_user must be a UID "
                          "above 0 (sessions never run as root)")
    return SessionSpec(
        session_id=session_id, user=user, template=template.name,
        display_name=template.display_name or template.name, image=image.strip(),
        vnc_port=port, cpu=template.cpu, memory_mb=template.memory_mb, env=env,
        command=_strings(k8s.get("command"), "platforms.kubernetes.command"),
        args=_strings(k8s.get("args"), "platforms.kubernetes.args"),
        node_selector=_string_map(k8s.get("node_selector"),
                                  "platforms.kubernetes.node_selector"),
        tolerations=_tolerations(k8s.get("tolerations")),
        image_pull_secrets=_strings(k8s.get("image_pull_secrets"),
                                    "platforms.kubernetes.image_pull_secrets"),
        image_pull_policy=policy, persistent_home=template.persistent_home,
        home_path=home_path, run_as_user=run_as, name=name)
