"""The agent's service tree and its shutdown order.

`build_agent` wires driver, journal, executor, tunnels and the control connection (no
logic), holding the state directory's lock (agent/state_lock.py) from before the journal is
opened until the very end of `stopService`. `AgentService.startService` awaits the driver's
discovery (`driver.start()`) before the control connection starts, so the first `register`
reports what really runs. With `guard_process` (`twistd agent`), `startService` first
hardens the process against its sessions (agent/process_guard.py: not dumpable, a
subreaper that kills what sessions leave behind).
`stopService` drains in an order that keeps the control plane told: new commands are
refused, tunnels are closed, the driver shuts down by its own policy (the local driver
stops its sessions, which are the agent's children, and they are reported as
`session_status` failed; container platforms leave theirs running), anything sessions
left below the agent is killed, running commands get a moment to answer, and only then is
the control channel closed with 1000.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from agent import process_guard
from agent.channel import AgentChannel
from agent.commands import CommandExecutor
from agent.control import PING_INTERVAL, PING_TIMEOUT, ControlService
from agent.endpoints import ControlPlaneAddress
from agent.journal import CommandJournal
from agent.platforms.base import PlatformDriver
from agent.state_lock import StateDirLock
from agent.tunnel import TunnelManager

log = Logger()

SHUTDOWN_REASON = "the agent was shut down, which stopped this session"
COMMAND_DRAIN_SECONDS = 5.0


class AgentService(service.MultiService):
    def __init__(self, reactor, driver: PlatformDriver, channel: AgentChannel,
                 executor: CommandExecutor, tunnels: TunnelManager,
                 journal: CommandJournal, state_lock: StateDirLock,
                 guard_process: bool = False) -> None:
        super().__init__()
        self.reactor = reactor
        self.driver, self.channel, self.executor = driver, channel, executor
        self.tunnels, self.journal, self.state_lock = tunnels, journal, state_lock
        self.guard_process = guard_process

    def startService(self) -> None:
        service.Service.startService(self)
        self.state_lock.record_pid()  # twistd may have forked since makeService
        if self.guard_process:  # after any fork too: a subreaper's children do not inherit it
            process_guard.engage(self.reactor)
        self._discovered = defer.maybeDeferred(self.driver.start)
        self._discovered.addCallback(self._start_children)
        self._discovered.addErrback(self._discovery_failed)

    def _start_children(self, _=None) -> None:
        if self.running:
            for child in self:
                child.startService()
            self._children_started = True

    def _discovery_failed(self, failure) -> None:
        # A driver retries discovery itself; one that gives up leaves nothing to serve.
        log.failure("the {platform} driver could not start; the agent stops", failure,
                    platform=self.driver.name)
        from twisted.internet import reactor as global_reactor

        if self.reactor is global_reactor and global_reactor.running:
            global_reactor.stop()

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        # Each step runs even if the one before failed: a half-drained agent leaks sessions.
        self.executor.accepting = False
        try:
            await self.tunnels.close_all()
        except Exception:
            log.failure("closing tunnels at shutdown")
        stopped: list[str] = []
        try:
            stopped = await self.driver.shutdown()
        except Exception:
            log.failure("stopping sessions at shutdown")
        for session_id in stopped:
            self.channel.session_status(session_id, "failed", SHUTDOWN_REASON)
        process_guard.kill_leftovers()
        running = self.executor.running()
        if running:
            waiting = defer.DeferredList(running, consumeErrors=True)
            waiting.addTimeout(COMMAND_DRAIN_SECONDS, self.reactor)
            try:
                await waiting
            except defer.TimeoutError:
                log.warn("{count} command(s) still running at shutdown", count=len(running))
        if getattr(self, "_children_started", False):
            await super().stopService()
        else:
            self._discovered.cancel()
            service.Service.stopService(self)
        self.journal.close()
        self.state_lock.release()
        log.info("agent stopped ({count} session(s) stopped)", count=len(stopped))


def build_agent(reactor, *, agent_id: str, address: ControlPlaneAddress, token: str,
                driver: PlatformDriver, state_dir: Path, region: str = "",
                heartbeat_interval: float = 10.0, retry_policy=None,
                state_lock: StateDirLock | None = None, ping_interval: float = PING_INTERVAL,
                ping_timeout: float = PING_TIMEOUT, guard_process: bool = False
                ) -> AgentService:
    """Raises StateDirLocked if another agent holds `state_dir`. `guard_process`: this is
    the agent's own process (`twistd agent`), to harden (agent/process_guard.py)."""
    state_lock = (state_lock or StateDirLock(Path(state_dir))).acquire()
    channel = AgentChannel(agent_id=agent_id, platform_name=driver.name, region=region,
                           driver=driver, clock=reactor, heartbeat_interval=heartbeat_interval)
    tunnels = TunnelManager(reactor, address)
    journal = CommandJournal(Path(state_dir) / "commands.jsonl")
    executor = CommandExecutor(driver, tunnels, journal, channel.emit, channel.server_now,
                               reactor)
    channel.command_handler = executor.handle
    agent = AgentService(reactor, driver, channel, executor, tunnels, journal, state_lock,
                         guard_process=guard_process)
    ControlService(reactor, address, token, channel, retry_policy, ping_interval=ping_interval,
                   ping_timeout=ping_timeout).setServiceParent(agent)
    return agent
