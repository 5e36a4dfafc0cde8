"""PLATFORM=docker: sessions as containers on a Docker engine (see driver.py, docs/docker.md).

`build_driver` reads the agent's DOCKER_* settings (agent/config.py) and reports every
problem with them at once, as the rest of the configuration does.
"""

from __future__ import annotations

from pathlib import Path

from agent.platforms.base import Capacity
from streamspace_common.settings import ConfigError


def build_driver(reactor, options, state_dir: Path, capacity: Capacity):
    from agent.platforms.docker.address import EngineAddress
    from agent.platforms.docker.driver import DockerDriver
    from agent.platforms.docker.engine import EngineClient
    from agent.platforms.docker.spec import Placement

    problems = []
    tls_verify = str(options["docker_tls_verify"] or "").strip().lower() not in ("", "0",
                                                                                 "false")
    cert_path = Path(options["docker_cert_path"]).expanduser() \
        if options["docker_cert_path"] else None
    address = None
    try:
        address = EngineAddress.parse(options["docker_host"], tls_verify, cert_path)
    except ValueError as e:
        problems.append(f"DOCKER_HOST: {e}")
    placement = Placement(network=options["docker_network"] or "bridge",
                          publish=options["docker_publish_vnc"] == "true")
    if placement.host_network and placement.publish:
        problems.append("DOCKER_PUBLISH_VNC: with DOCKER_NETWORK=host there is nothing to "
                        "publish (each session's VNC server listens on 127.0.0.1 itself)")
    if problems:
        raise ConfigError(problems, "agent")
    return DockerDriver(reactor, EngineClient(reactor, address), capacity,
                        agent_id=options["agent_id"], placement=placement,
                        pull_policy=options["docker_pull"],
                        purge_homes=options["docker_purge_homes"] == "always")
