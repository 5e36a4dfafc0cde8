"""Reading the engine's view of a session container (pure functions on its JSON).

Where its VNC server is (host network, a published 127.0.0.1 port, or its address on a
network), and why it ended, as a sentence: out of memory, the exit code with the engine's
own error and the container's last output.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from agent.platforms.base import DriverError, VncEndpoint
from agent.platforms.docker.spec import HOST_PORTS, VNC_PORT, Placement, host_display
from agent.platforms.xvnc import display_in_use

LOOPBACK = "127.0.0.1"
LOG_LINES = 20
TAIL_CHARS = 600


def vnc_endpoint(info: dict[str, Any], placement: Placement) -> VncEndpoint:
    """The address the agent dials for a running container (its `GET .../json`)."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    try:
        port = int(labels[VNC_PORT])
    except (KeyError, ValueError):
        raise DriverError("the session's container has no VNC port label") from None
    if placement.host_network:
        return VncEndpoint(LOOPBACK, port)
    settings = info.get("NetworkSettings") or {}
    if placement.publish:
        bound = (settings.get("Ports") or {}).get(f"{port}/tcp") or []
        for binding in bound:
            if binding.get("HostIp") in (LOOPBACK, "") and binding.get("HostPort"):
                return VncEndpoint(LOOPBACK, int(binding["HostPort"]))
        raise DriverError("the engine did not publish the session's VNC port on 127.0.0.1")
    network = (settings.get("Networks") or {}).get(placement.network) or {}
    address = network.get("IPAddress") or network.get("GlobalIPv6Address")
    if not address:
        raise DriverError(f"the session's container has no address on the Docker network "
                          f"{placement.network!r}")
    return VncEndpoint(address, port)


def exit_reason(state: dict[str, Any], logs: str, memory_mb: int, *, oom_event: bool = False,
                at_start: bool = False) -> tuple[str, str]:
    """(session state, sentence) for a container that ended without being asked to."""
    tail = last_output(logs)
    if state.get("OOMKilled") or oom_event:
        limit = f" (its limit is {memory_mb} MB)" if memory_mb else ""
        reason = f"the session ran out of memory{limit} and was killed"
        return "failed", f"{reason}; last output: {tail}" if tail else reason
    code = state.get("ExitCode")
    if code == 0 and not at_start:
        return "stopped", "the application exited"
    when = " at start" if at_start else ""
    reason = f"the container exited{when} with code {code}"
    if state.get("Error"):
        reason += f": {str(state['Error'])[:300]}"
    return "failed", f"{reason} (last output: {tail})" if tail else reason


def last_output(logs: str, chars: int = TAIL_CHARS) -> str:
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    text = " | ".join(lines)
    return text if len(text) <= chars else "..." + text[-chars:]


def port_free(port: int) -> bool:
    """Nothing listens on the loopback port (so a session's Xvnc can: with `-localhost`
    it binds both 127.0.0.1 and ::1)."""
    for family, address in ((socket.AF_INET, LOOPBACK), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with s:
            try:
                s.bind((address, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                    continue  # IPv6 without a loopback address
                return False
    return True


def host_slot_free(port: int) -> bool:
    """Both the port and its display are free on the host (host networking)."""
    return port_free(port) and not display_in_use(host_display(port))


def allocate_host_port(taken: set[int], ports: range = HOST_PORTS) -> int:
    for port in ports:
        if port not in taken and host_slot_free(port):
            return port
    raise DriverError(f"no free TCP port for the session's VNC server "
                      f"({ports.start}-{ports.stop - 1} are all in use)")


ICC_OPTION = "com.docker.network.bridge.enable_icc"


def isolation_warning(placement: Placement, network: dict[str, Any] | None) -> str | None:
    """Why sessions on this network could reach each other's VNC servers (which have no
    password: only the agent is meant to reach them), or None when they cannot."""
    if placement.host_network:
        return ("DOCKER_NETWORK=host: sessions share the host's loopback, so each can reach "
                "the others' VNC servers; use it for one user's sessions or for tests, and a "
                "network without inter-container traffic otherwise (docs/docker.md)")
    if network is None:
        return (f"the Docker network {placement.network!r} does not exist (yet): sessions "
                "will fail to start until it does")
    options = network.get("Options") or {}
    if network.get("Driver") == "bridge" and options.get(ICC_OPTION, "true") != "false":
        return (f"the Docker network {placement.network!r} lets containers talk to each "
                f"other, so a session can reach the others' VNC servers; create one with "
                f"-o {ICC_OPTION}=false (docs/docker.md)")
    return None
