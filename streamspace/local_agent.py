"""Dev mode's local agent: provisioned and supervised by the control plane itself.

`make run` must give a working session from the first start on one machine. So, with
--local-agent, the control plane (after the database is ready) makes sure an agent record
`local` exists, gives it a fresh token (0600 file in the state directory, only its hash in
the database), and runs `twistd agent` as a child process. Stopping the control plane stops
the agent (and so its sessions) first; an agent that dies is restarted after a short delay.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.logger import Logger

from streamspace.agents.provisioning import ensure_agent
from streamspace.auth import agent_tokens
from streamspace.db.pool import Database
from streamspace.processes import SupervisedProcess
from streamspace.secrets_store import write_private

log = Logger()

LOCAL_AGENT_ID = "local"
STOP_GRACE = 20.0
RESTART_DELAY = 2.0


def _agent_output(line: str) -> None:
    """The agent's log lines go to our stdout, marked, as it has no terminal of its own."""
    sys.stdout.write(f"[agent] {line}\n")
    sys.stdout.flush()


class LocalAgentService(Service):
    name = "local-agent"

    def __init__(self, reactor, database, state_dir: Path, control_plane_url: str,
                 max_sessions: int = 0) -> None:
        self.reactor = reactor
        self.database = database
        self.state_dir = Path(state_dir)
        self.url = control_plane_url
        self.max_sessions = max_sessions
        self.token_file = self.state_dir / "local-agent.token"
        self._proc: SupervisedProcess | None = None
        self._restart = None

    def startService(self) -> None:
        super().startService()
        self.database.ready.addCallback(self._database_ready)

    def _database_ready(self, db):
        d = defer.Deferred.fromCoroutine(self._provision(db))
        d.addCallback(lambda _: self._spawn())
        d.addErrback(lambda f: log.failure("could not start the local agent", f))
        return db

    async def _provision(self, db: Database) -> None:
        token = agent_tokens.generate()
        await ensure_agent(db, agent_id=LOCAL_AGENT_ID, platform="local", region="local",
                           token=token, provisioned_by="dev mode")
        write_private(self.token_file, token + "\n")

    def _spawn(self) -> None:
        if not self.running:
            return
        twistd = str(Path(sys.executable).parent / "twistd")
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "DB_PASSWORD",
                                                                 "DATABASE_URL",
                                                                 "ADMIN_PASSWORD")},
            "AGENT_ID": LOCAL_AGENT_ID, "CONTROL_PLANE_URL": self.url,
            "AGENT_TOKEN_FILE": str(self.token_file), "PLATFORM": "local", "REGION": "local",
            "AGENT_STATE_DIR": str(self.state_dir / "agent"),
            "MAX_SESSIONS": str(self.max_sessions), "PYTHONUNBUFFERED": "1",
        }
        env.pop("AGENT_TOKEN", None)
        proc = SupervisedProcess(_agent_output)
        self._proc = proc
        self.reactor.spawnProcess(
            proc, twistd, [twistd, "--nodaemon", "--pidfile=",
                           "--logger=streamspace_common.logs.observer", "agent"], env=env)
        log.info("local agent started (pid {pid})", pid=proc.transport.pid)
        proc.ended.addCallback(self._ended, proc)

    def _ended(self, reason, proc: SupervisedProcess) -> None:
        if self._proc is proc:
            self._proc = None
        if self.running:
            log.warn("local agent exited ({reason}); restarting in {d:.0f}s",
                     reason=reason, d=RESTART_DELAY)
            self._restart = self.reactor.callLater(RESTART_DELAY, self._spawn)

    def stopService(self):
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        proc, self._proc = self._proc, None
        if proc is None or proc.ended.called:
            return None
        try:
            proc.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return None
        killer = self.reactor.callLater(STOP_GRACE, _kill, proc)
        proc.ended.addBoth(lambda r: killer.active() and killer.cancel())
        return proc.ended


def _kill(proc: SupervisedProcess) -> None:
    try:
        proc.transport.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass
