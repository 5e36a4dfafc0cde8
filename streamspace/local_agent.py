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

Its environment is an allow-list (`agent_environment`): what the agent needs to run and
the agent settings an operator may tune, never the rest of ours (JWT_SECRET,
METRICS_TOKEN, DB_*, whatever else an operator exports).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from streamspace.agents.provisioning import ensure_agent
from streamspace.auth import agent_tokens
from streamspace.db.pool import Database
from streamspace.processes import (
    Backoff,
    SupervisedProcess,
    Supervisor,
    detached,
    stop_child,
    stop_stray,
)
from streamspace.secrets_store import write_private
from streamspace_common import procfs

log = Logger()

LOCAL_AGENT_ID = "local"
STOP_GRACE = 20.0

# What passes from our environment to the agent's: how to run (PATH, the virtualenv,
# locale, time zone, temporary directory, trusted CAs) and agent settings that tune it.
# Everything the agent must have (id, URL, token file, platform...) is set explicitly.
PASSED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "LOG_LEVEL", "HEARTBEAT_INTERVAL", "MAX_CPU", "MAX_MEMORY", "LOCAL_ALLOW_UNSANDBOXED",
})
PASSED_PREFIXES = ("LC_",)


def agent_environment(ours: Mapping[str, str], fixed: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment: the allowed part of `ours`, then `fixed` over it."""
    passed = {k: v for k, v in ours.items()
              if k in PASSED_NAMES or k.startswith(PASSED_PREFIXES)}
    return {**passed, **fixed}


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
        self._supervisor = Supervisor(reactor, "local agent", self._launch,
                                      Backoff(reactor, initial=2.0))

    def startService(self) -> None:
        super().startService()
        self.database.ready.addCallback(self._database_ready)

    def _database_ready(self, db):
        d = defer.Deferred.fromCoroutine(self._provision(db))
        d.addCallback(lambda _: defer.Deferred.fromCoroutine(self._stop_leftovers()))
        d.addCallback(lambda _: self._supervisor.start() if self.running else None)
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

    def environment(self) -> dict[str, str]:
        fixed = {
            "AGENT_ID": LOCAL_AGENT_ID, "CONTROL_PLANE_URL": self.url,
            "AGENT_TOKEN_FILE": str(self.token_file), "PLATFORM": "local", "REGION": "local",
            "MAX_SESSIONS": str(self.max_sessions), "PYTHONUNBUFFERED": "1",
            # sandboxes bind /usr, /etc, /opt whole: our state must not show there
            "LOCAL_HIDE_PATHS": ":".join(filter(None, [os.environ.get("LOCAL_HIDE_PATHS"),
                                                       str(self.state_dir.absolute())])),
        }
        if self.ca_file:
            fixed["CONTROL_PLANE_CA_FILE"] = self.ca_file
        return agent_environment(os.environ, fixed)

    async def _launch(self) -> SupervisedProcess:
        """Supervision's launch: spawn `twistd agent` (an OSError is retried)."""
        twistd = str(Path(sys.executable).parent / "twistd")
        proc = SupervisedProcess(_agent_output)
        # The state directory goes in argv so a leftover agent can be recognised by it.
        argv = detached([twistd, "--nodaemon", "--pidfile=",
                         "--logger=streamspace_common.logs.observer", "agent",
                         "--state-dir", str(self.agent_state_dir)], "TERM")
        self.reactor.spawnProcess(proc, argv[0], argv, env=self.environment())
        self._proc = proc
        log.info("local agent started (pid {pid})", pid=proc.transport.pid)
        return proc

    async def _stop(self) -> None:
        self._supervisor.halt()
        proc, self._proc = self._proc, None
        if proc is None or proc.ended.called:
            return
        await stop_child(self.reactor, proc, "local agent", signal.SIGTERM, STOP_GRACE)
        log.info("local agent stopped")

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())


def _agents_using(state_dir: str) -> list[int]:
    """Pids of `twistd agent` processes whose argv names `state_dir` (reads /proc)."""
    found = []
    for pid in procfs.pids():
        if pid == os.getpid():
            continue
        args = procfs.cmdline(pid)
        if "agent" not in args:
            continue
        named = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--state-dir"}
        named |= {a.split("=", 1)[1] for a in args if a.startswith("--state-dir=")}
        if state_dir in named:
            found.append(pid)
    return found
