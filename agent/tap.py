"""`twistd agent`: turns options into the agent's service tree (see agent/service.py)."""

from __future__ import annotations

from pathlib import Path

from twisted.application import service
from twisted.logger import Logger

from agent.config import AgentOptions
from agent.endpoints import ControlPlaneAddress
from agent.platforms import build_driver
from agent.platforms.base import Capacity
from agent.service import build_agent
from agent.state_lock import StateDirLock
from streamspace_common import logs
from streamspace_common.accel import check_websocket_acceleration
from streamspace_common.settings import ConfigError

log = Logger()

Options = AgentOptions


def read_token(options) -> str:
    if options["agent_token"]:
        return options["agent_token"].strip()
    path = Path(options["agent_token_file"])
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError([f"AGENT_TOKEN_FILE: cannot read {path}: {e.strerror}"],
                          "agent") from None
    if not token:
        raise ConfigError([f"AGENT_TOKEN_FILE: {path} is empty"], "agent")
    return token


def makeService(options) -> service.IService:
    from twisted.internet import reactor

    logs.set_level(options["log_level"])
    token = read_token(options)
    address = ControlPlaneAddress.parse(options["control_plane_url"],
                                        options["control_plane_ca_file"])
    state_dir = Path(options["state_dir"]).absolute()
    # before the driver exists: a driver may reap what it finds in the directory
    state_lock = StateDirLock(state_dir).acquire()
    try:
        return _build(reactor, options, token, address, state_dir, state_lock)
    except BaseException:
        state_lock.release()
        raise


def _build(reactor, options, token: str, address: ControlPlaneAddress, state_dir: Path,
           state_lock: StateDirLock) -> service.IService:
    capacity = Capacity(max_sessions=options["max_sessions"], max_cpu=options["max_cpu"],
                        max_memory_gb=options["max_memory"])
    driver = build_driver(options["platform"], reactor, options, state_dir, capacity)
    check_websocket_acceleration()
    log.info("agent {agent_id} ({platform}) for {url}, state in {state_dir}",
             agent_id=options["agent_id"], platform=driver.name,
             url=address.url(""), state_dir=str(state_dir))
    return build_agent(reactor, agent_id=options["agent_id"], address=address, token=token,
                       driver=driver, state_dir=state_dir, region=options["region"],
                       heartbeat_interval=options["heartbeat_interval"],
                       state_lock=state_lock, guard_process=True)
