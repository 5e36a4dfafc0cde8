"""`twistd agent`: wires the agent's service tree."""

from __future__ import annotations

from twisted.application import service

from agent.config import AgentOptions
from streamspace import logs

Options = AgentOptions


def makeService(options) -> service.IService:
    logs.set_level(options["log_level"])
    raise SystemExit(
        "agent: the control connection is not implemented yet (tracked in issue 4); "
        "`twistd agent --help` documents its configuration")
