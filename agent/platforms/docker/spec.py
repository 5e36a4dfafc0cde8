"""What a session's container looks like: the template's `platforms.docker` settings,
validated, and the Engine API bodies made from them (pure functions, no I/O).

Every container is labelled like the Kubernetes objects (`streamspace.io/session`, `user`,
`template`, `agent`, `app.kubernetes.io/managed-by=streamspace`) plus what the driver needs
to find a session again after a restart (its VNC port, hibernate mode, home volume,
reserved resources). Security by default: no-new-privileges, every capability dropped
(the template may add named ones back), a read-only root with a tmpfs /tmp (unless the
template says the image cannot run so), never root, never privileged, and the VNC port is
never published on anything but 127.0.0.1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.platforms.base import DriverError, SessionTemplate, UserRef

# Host networking: each session's Xvnc gets its own port from this range, below Linux's
# ephemeral ports (so outgoing connections never take one while a session hibernates) and
# above the 59xx the local platform's displays use.
HOST_PORTS = range(15900, 16900)
# ...and its own X display: host networking shares the host's abstract socket namespace,
# where an X client tries `@/tmp/.X11-unix/X<n>` before the container's own socket file, so
# a fixed `:1` would reach whatever X server holds :1 on the host. Display
# HOST_DISPLAYS.start + (port - HOST_PORTS.start), whose abstract socket the session's
# Xvnc binds, reserving the number on the machine.
HOST_DISPLAYS = range(1100, 1100 + len(HOST_PORTS))


def host_display(port: int) -> int:
    """The X display of the session whose Xvnc listens on host port `port`."""
    return HOST_DISPLAYS.start + (port - HOST_PORTS.start)


MANAGED_BY = "app.kubernetes.io/managed-by"
SESSION = "streamspace.io/session"
USER = "streamspace.io/user"
USERNAME = "streamspace.io/username"
TEMPLATE = "streamspace.io/template"
AGENT = "streamspace.io/agent"
NAME = "streamspace.io/name"
HIBERNATE = "streamspace.io/hibernate"
VNC_PORT = "streamspace.io/vnc-port"
HOME_VOLUME = "streamspace.io/home-volume"
PERSISTENT_HOME = "streamspace.io/persistent-home"
CPU = "streamspace.io/cpu"
MEMORY_MB = "streamspace.io/memory-mb"

HOST_NETWORK = "host"
HIBERNATE_MODES = ("stop", "pause")
DEFAULT_VNC_PORT = 5901
DEFAULT_HOME = "/home/streamspace"
DEFAULT_USER = "1000:1000"
DEFAULT_SHM = 256 << 20
TMPFS = "rw,nosuid,nodev,size=256m"
PIDS_LIMIT = 2048

_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@+-]{0,254}$", re.IGNORECASE)
_CAP = re.compile(r"^(CAP_)?[A-Z][A-Z_]{1,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_GEOMETRY = re.compile(r"^\d{3,5}x\d{3,5}$")
_SIZE = re.compile(r"^(\d+)\s*([kmg]?)b?$", re.IGNORECASE)
_ROOT_USERS = {"0", "root"}


def container_name(session_id: str) -> str:
    return f"streamspace-{session_id}"


def hibernated_name(session_id: str) -> str:
    """Hibernated (stopped) containers are renamed, so a restarted agent tells them from
    containers that died on their own; the engine keeps the name, nothing else needs to."""
    return f"streamspace-{session_id}-hibernated"


def home_volume(template: SessionTemplate, user: UserRef, session_id: str) -> str:
    """One volume per user and template (persistent homes), else one per session."""
    if template.persistent_home:
        return f"streamspace-home-{user.id}-{template.name}"
    return f"streamspace-session-{session_id}"


def parse_size(value: Any, what: str) -> int:
    """Bytes from 67108864, "64m", "1g", "512k"."""
    if isinstance(value, bool):
        raise DriverError(f"{what} must be a size such as 256m")
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE.match(str(value).strip())
    if not m:
        raise DriverError(f"{what} {value!r} is not a size such as 256m")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def _argv(value: Any, what: str) -> list[str] | None:
    """A command as a list of arguments, or a string run by /bin/sh -c."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return ["/bin/sh", "-c", value]
    if isinstance(value, Sequence) and all(isinstance(a, str) for a in value):
        return list(value)
    raise DriverError(f"{what} must be a string or a list of strings")


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str) or \
            not all(isinstance(v, str) for v in value):
        raise DriverError(f"{what} must be a list of strings")
    return list(value)


@dataclass(frozen=True)
class SessionSpec:
    """A template's `platforms.docker` settings, checked (DriverError says what is wrong)."""

    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    vnc_port: int = DEFAULT_VNC_PORT
    port_env: str = "VNC_PORT"
    shm_size: int = DEFAULT_SHM
    security_opt: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    read_only: bool = True
    home: str = DEFAULT_HOME
    user: str = DEFAULT_USER
    hibernate: str = "stop"
    geometry: str = "1280x800"

    @classmethod
    def from_template(cls, template: SessionTemplate) -> SessionSpec:
        where = f"template {template.name!r}: platforms.docker"
        docker = template.platform("docker")
        image = docker.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DriverError(f"template {template.name!r} cannot run on the Docker platform "
                              "(it has no platforms.docker.image)")
        if not _IMAGE.match(image):
            raise DriverError(f"{where}.image {image!r} is not an image reference")
        env = dict(template.env)
        extra = docker.get("env") or {}
        if not isinstance(extra, Mapping):
            raise DriverError(f"{where}.env must be an object")
        for key, value in extra.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise DriverError(f"{where}.env has an invalid variable name {key!r}")
            env[key] = value if isinstance(value, str) else str(value)
        if any("\0" in v for v in env.values()):
            raise DriverError(f"{where}.env contains a NUL byte")
        port = docker.get("vnc_port", DEFAULT_VNC_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise DriverError(f"{where}.vnc_port must be a port number")
        port_env = docker.get("vnc_port_env", "VNC_PORT")
        if not isinstance(port_env, str) or not _ENV_NAME.match(port_env):
            raise DriverError(f"{where}.vnc_port_env must be a variable name")
        security_opt = _strings(docker.get("security_opt"), f"{where}.security_opt")
        for opt in security_opt:
            flat = opt.replace("=", ":").lower()
            if flat.startswith("no-new-privileges") or "unconfined" in flat or \
                    flat == "label:disable":
                raise DriverError(f"{where}.security_opt {opt!r} would weaken the session's "
                                  "confinement (no-new-privileges is always on; seccomp, "
                                  "AppArmor and SELinux stay confined)")
        caps = []
        for cap in _strings(docker.get("cap_add"), f"{where}.cap_add"):
            name = cap.upper()
            if not _CAP.match(name) or name in ("ALL", "CAP_ALL"):
                raise DriverError(f"{where}.cap_add {cap!r} is not a capability name "
                                  "(ALL is not allowed)")
            caps.append(name)
        user = str(docker.get("user") or DEFAULT_USER)
        if user.split(":", 1)[0] in _ROOT_USERS:
            raise DriverError(f"{where}.user: sessions never run as root")
        home = str(docker.get("home") or DEFAULT_HOME)
        if not home.startswith("/") or home == "/" or "\0" in home or ":" in home:
            raise DriverError(f"{where}.home must be an absolute directory such as "
                              f"{DEFAULT_HOME}")
        hibernate = str(docker.get("hibernate") or "stop")
        if hibernate not in HIBERNATE_MODES:
            raise DriverError(f"{where}.hibernate must be 'stop' or 'pause'")
        geometry = str(docker.get("geometry") or "1280x800")
        if not _GEOMETRY.match(geometry):
            raise DriverError(f"{where}.geometry {geometry!r} is not WIDTHxHEIGHT")
        read_only = docker.get("read_only_root", True)
        if not isinstance(read_only, bool):
            raise DriverError(f"{where}.read_only_root must be true or false")
        return cls(image=image.strip(), command=_argv(docker.get("command"), f"{where}.command"),
                   entrypoint=_argv(docker.get("entrypoint"), f"{where}.entrypoint"),
                   env=env, vnc_port=port, port_env=port_env,
                   shm_size=parse_size(docker.get("shm_size", DEFAULT_SHM), f"{where}.shm_size"),
                   security_opt=tuple(security_opt), cap_add=tuple(caps), read_only=read_only,
                   home=home, user=user, hibernate=hibernate, geometry=geometry)


@dataclass(frozen=True)
class Placement:
    """How the agent reaches sessions: which network, and whether the VNC port is
    published on a 127.0.0.1 host port (agent settings DOCKER_NETWORK, DOCKER_PUBLISH_VNC)."""

    network: str = "bridge"
    publish: bool = False

    @property
    def host_network(self) -> bool:
        return self.network == HOST_NETWORK


def labels(*, session_id: str, template: SessionTemplate, user: UserRef, agent_id: str,
           name: str, spec: SessionSpec, vnc_port: int, volume: str) -> dict[str, str]:
    return {
        MANAGED_BY: "streamspace", SESSION: session_id, USER: user.id,
        USERNAME: _printable(user.username), TEMPLATE: template.name, AGENT: agent_id,
        NAME: _printable(name), HIBERNATE: spec.hibernate, VNC_PORT: str(vnc_port),
        HOME_VOLUME: volume, PERSISTENT_HOME: "true" if template.persistent_home else "false",
        CPU: f"{template.cpu:g}", MEMORY_MB: str(template.memory_mb),
    }


def volume_body(volume: str, *, session_id: str, template: SessionTemplate, user: UserRef,
                agent_id: str) -> dict[str, Any]:
    volume_labels = {MANAGED_BY: "streamspace", USER: user.id, TEMPLATE: template.name,
                     AGENT: agent_id, PERSISTENT_HOME: str(template.persistent_home).lower()}
    if not template.persistent_home:
        volume_labels[SESSION] = session_id
    return {"Name": volume, "Labels": volume_labels}


def container_body(*, spec: SessionSpec, placement: Placement, template: SessionTemplate,
                   user: UserRef, name: str, vnc_port: int,
                   container_labels: Mapping[str, str], volume: str) -> dict[str, Any]:
    """The `POST /containers/create` body. `vnc_port` is the port Xvnc listens on inside
    the container: with host networking, the one the agent allocated for this session."""
    env = dict(spec.env)
    env.update({
        "HOME": spec.home, spec.port_env: str(vnc_port), "VNC_GEOMETRY": spec.geometry,
        "VNC_DESKTOP": (_printable(name) or template.display_name or template.name)[:64],
        "STREAMSPACE_USER": _printable(user.username),
        "STREAMSPACE_SESSION_NAME": _printable(name),
        "STREAMSPACE_SESSION_ID": container_labels[SESSION],
    })
    if placement.host_network:
        env["VNC_LOCALHOST"] = "1"  # the host's loopback only: never a public address
        env["VNC_DISPLAY"] = str(host_display(vnc_port))  # unique on the shared network
    host_config: dict[str, Any] = {
        "NetworkMode": placement.network,
        "Init": True,
        "ReadonlyRootfs": spec.read_only,
        "CapDrop": ["ALL"],
        "CapAdd": list(spec.cap_add),
        "SecurityOpt": ["no-new-privileges:true", *spec.security_opt],
        "Privileged": False,
        "ShmSize": spec.shm_size,
        "Tmpfs": {"/tmp": TMPFS, "/run": TMPFS},
        "PidsLimit": PIDS_LIMIT,
        "Mounts": [{"Type": "volume", "Source": volume, "Target": spec.home}],
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
    }
    if template.cpu:
        host_config["NanoCpus"] = int(template.cpu * 1e9)
    if template.memory_mb:
        host_config["Memory"] = template.memory_mb << 20
        host_config["MemorySwap"] = template.memory_mb << 20  # no swap beyond the limit
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": dict(container_labels),
        "User": spec.user,
        "WorkingDir": spec.home,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host_config,
    }
    if spec.command is not None:
        body["Cmd"] = spec.command
    if spec.entrypoint is not None:
        body["Entrypoint"] = spec.entrypoint
    if not placement.host_network:
        key = f"{vnc_port}/tcp"
        body["ExposedPorts"] = {key: {}}
        if placement.publish:
            # the engine picks a free host port, bound to loopback only
            host_config["PortBindings"] = {key: [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    return body


def _printable(text: str, limit: int = 128) -> str:
    """User-supplied names go into labels and the environment: no control characters."""
    return "".join(c for c in str(text) if c.isprintable())[:limit]
