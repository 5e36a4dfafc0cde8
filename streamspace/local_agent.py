"""Dev mode's local agent: provisioned and supervised by the control plane itself.

`make run` must give a working session from the first start on one machine. So, with
--local-agent, the control plane (after the database is ready) makes sure an agent record
`local` exists, gives it a fresh token (0600 file in the state directory, only its hash in
the database), and runs `twistd agent` as a child process. Stopping the control plane stops
the agent (and so its sessions) first; an agent that dies is restarted with backoff.

The agent runs in its own session, so a terminal's Ctrl-C reaches only the control plane,
which stops the agent before the database; and it gets SIGTERM from the kernel if the
control plane dies, even by SIGKILL. An agent of our state directory that a previous run
left behind anyway is stopped before a new one starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import defer, error, threads
from twisted.logger import Logger

from streamspace.agents.provisioning import ensure_agent
from streamspace.auth import agent_tokens
from streamspace.db.pool import Database
from streamspace.processes import Backoff, SupervisedProcess, cmdline, detached, stop_stray
from streamspace.secrets_store import write_private

log = Logger()

LOCAL_AGENT_ID = "local"
STOP_GRACE = 20.0


def _agent_output(line: str) -> None:
    """The agent's log lines go to our stdout, marked, as it has no terminal of its own."""
    sys.stdout.write(f"[agent] {line}\n")
    sys.stdout.flush()


class LocalAgentService(Service):
    name = "local-agent"

    def __init__(self, reactor, database, state_dir: Path, control_plane_url: str,
                 max_sessions: int = 0, ca_file: str | None = None) -> None:
        self.reactor = reactor
        self.database = database
        self.state_dir = Path(state_dir)
        self.agent_state_dir = self.state_dir / "agent"
        self.url = control_plane_url
        self.max_sessions = max_sessions
        self.ca_file = ca_file
        self.token_file = self.state_dir / "local-agent.token"
        self._proc: SupervisedProcess | None = None
        self._restart = None
        self._backoff = Backoff(reactor, initial=2.0)

    def startService(self) -> None:
        super().startService()
        self.database.ready.addCallback(self._database_ready)

    def _database_ready(self, db):
        d = defer.Deferred.fromCoroutine(self._provision(db))
        d.addCallback(lambda _: defer.Deferred.fromCoroutine(self._stop_leftovers()))
        d.addCallback(lambda _: self._spawn())
        d.addErrback(lambda f: log.failure("could not start the local agent", f))
        return db

    async def _provision(self, db: Database) -> None:
        token = agent_tokens.generate()
        await ensure_agent(db, agent_id=LOCAL_AGENT_ID, platform="local", region="local",
                           token=token, provisioned_by="dev mode")
        write_private(self.token_file, token + "\n")

    async def _stop_leftovers(self) -> None:
        """An agent of our state directory still running (a previous control plane was
        killed and the kernel's death signal did not end it) would fight the new one
        over the sessions: stop it first."""
        mine = str(self.agent_state_dir)
        for pid in await threads.deferToThread(_agents_using, mine):
            await stop_stray(self.reactor, pid, "local agent", grace=STOP_GRACE)

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
            "MAX_SESSIONS": str(self.max_sessions), "PYTHONUNBUFFERED": "1",
            # sandboxes bind /usr, /etc, /opt whole: our state must not show there
            "LOCAL_HIDE_PATHS": ":".join(filter(None, [os.environ.get("LOCAL_HIDE_PATHS"),
                                                       str(self.state_dir.absolute())])),
        }
        env.pop("AGENT_TOKEN", None)
        env.pop("AGENT_STATE_DIR", None)
        if self.ca_file:
            env["CONTROL_PLANE_CA_FILE"] = self.ca_file
        proc = SupervisedProcess(_agent_output)
        self._proc = proc
        # The state directory goes in argv so a leftover agent can be recognised by it.
        argv = detached([twistd, "--nodaemon", "--pidfile=",
                         "--logger=streamspace_common.logs.observer", "agent",
                         "--state-dir", str(self.agent_state_dir)], "TERM")
        self.reactor.spawnProcess(proc, argv[0], argv, env=env)
        self._backoff.started()
        log.info("local agent started (pid {pid})", pid=proc.transport.pid)
        proc.ended.addCallback(self._ended, proc)

    def _ended(self, reason, proc: SupervisedProcess) -> None:
        if self._proc is proc:
            self._proc = None
        if self.running:
            delay = self._backoff.delay()
            log.warn("local agent exited ({reason}); restarting in {d:.0f}s",
                     reason=reason, d=delay)
            self._restart = self.reactor.callLater(delay, self._spawn)
        else:
            log.info("local agent stopped")

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


def _agents_using(state_dir: str) -> list[int]:
    """Pids of `twistd agent` processes whose argv names `state_dir` (reads /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        args = cmdline(int(entry.name))
        if "agent" not in args:
            continue
        named = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--state-dir"}
        named |= {a.split("=", 1)[1] for a in args if a.startswith("--state-dir=")}
        if state_dir in named:
            found.append(int(entry.name))
    return found


def _kill(proc: SupervisedProcess) -> None:
    try:
        proc.transport.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass
