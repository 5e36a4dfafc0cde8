"""The local platform driver: each session is an Xvnc display plus the template's command.

Per session: Xvnc (RFB on a Unix socket only the agent reaches, X11 behind a cookie: see
xvnc.py) and `/bin/sh -c <platforms.local.command>` in that display, each in a bubblewrap
sandbox as the user's own Unix account (sandbox.py, local_accounts.py) and in its own
process group. Stop asks both to end (SIGTERM inside the sandbox, SIGKILL after a grace
period), sweeps anything of the session left, frees the display and, with the user's last
session, the account. Hibernate does the same but keeps the home; wake starts again on it.

What this machine can isolate is probed at `start()`. Without accounts (the agent is not
root) sessions of only one user run at a time, and a start for another user fails saying
why. Without any sandbox none runs: as root, since it would run as root; otherwise since
it could impersonate the agent, unless the operator allows it (`allow_unsandboxed`,
LOCAL_ALLOW_UNSANDBOXED) for an agent of one trusted user. Then the agent process, made
a subreaper by `twistd agent` (agent/process_guard.py), kills whatever sessions left below
it once the last one has ended.

Shutdown policy (`outlives_agent` False): sessions are children of the agent, so stopping
the agent stops them (`shutdown`), and sandboxes die with the agent (`--die-with-parent`)
even when it is killed. A restarted agent reports only its hibernated sessions and the
control plane reconciles; `start()` first reaps every process still marked with this
state directory, stale sandboxes (X locks and sockets) and this agent's accounts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import ProcessDone
from twisted.logger import Logger

from agent import process_guard
from agent.platforms import blocking, procgroup, sandbox, xvnc
from agent.platforms.base import (
    HIBERNATED,
    RUNNING,
    STARTING,
    Capacity,
    DriverError,
    PlatformDriver,
    SessionInfo,
    SessionTemplate,
    Usage,
    UserRef,
    check_capacity,
)
from agent.platforms.local_accounts import AccountManager
from agent.platforms.local_processes import ProcessLauncher
from agent.platforms.local_session import (
    LocalSession,
    SessionRunner,
    SessionVncEndpoint,
    owner_of,
    printable,
    private_paths,
    settled,
)
from agent.platforms.local_store import LocalStore, SessionRecord, check_session_id
from streamspace_common import procfs

log = Logger()


class LocalDriver(PlatformDriver):
    name = "local"

    def __init__(self, reactor, state_dir: Path, capacity: Capacity, *,
                 rfb_timeout: float = 15.0, stop_grace: float = 5.0,
                 displays: xvnc.DisplayAllocator | None = None,
                 isolation: sandbox.Isolation | None = None,
                 allow_unsandboxed: bool = False, hide: Iterable[str] = ()) -> None:
        super().__init__(capacity)
        self.reactor = reactor
        self.store = LocalStore(state_dir, reactor)
        self.displays = displays or xvnc.DisplayAllocator()
        self.runner = SessionRunner(reactor, self.store, self.displays, rfb_timeout,
                                    stop_grace)
        self.isolation = isolation  # probed by start() unless given
        self.allow_unsandboxed = allow_unsandboxed
        self.hidden = private_paths(self.store.root, hide)
        self.accounts = AccountManager(reactor, self.store.root)
        self._sessions: dict[str, LocalSession] = {}
        # hibernated session -> its user id: records kept for a wake (cached: no disk
        # reads on the heartbeat path)
        self._hibernated: dict[str, str] = {}

    # -- lifecycle of the driver -------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._discover())

    async def _discover(self) -> None:
        """Learn what this machine can isolate, then reap what a previous agent run left
        behind (it was killed, not stopped): processes, stale sandboxes, accounts."""
        if self.isolation is None:
            self.isolation = await sandbox.probe(self.reactor,
                                                 allow_unsandboxed=self.allow_unsandboxed)
        self.runner.launcher = ProcessLauncher(self.reactor, self.isolation.bwrap, self.hidden)
        if self.isolation.refuse_all:
            log.error("local sessions cannot run on this agent: {problem}",
                      problem=self.isolation.problem)
        elif not self.isolation.isolated:
            log.warn("local sessions are not isolated from each other or from the agent "
                     "({problem}): this agent runs sessions of one user at a time",
                     problem=self.isolation.problem)
        marker = f"STREAMSPACE_AGENT_DIR={self.store.root}"
        orphans = await blocking.run(self.reactor, procgroup.pids_with_environ, marker)
        procgroup.kill_pids(orphans)
        await self.store.sweep_trash()
        for record in self.store.records():
            if record.state in ("starting", "running"):
                # an Xvnc killed mid-start leaves its lock and socket: in the sandbox's
                # private /tmp (removed with it) and our placeholder lock on the host, or
                # both in the host's /tmp without a sandbox
                self.store.discard_sandbox(record.session_id)
                if record.display is not None:
                    xvnc.remove_display_files(record.display, record.xvnc_pid,
                                              socket=not self.runner.launcher.sandboxed)
                record.state = "ended"
                self.store.save(record)
            elif record.state == "hibernated":
                self._hibernated[record.session_id] = record.user_id
        if orphans:
            log.warn("reaped {count} process(es) left by a previous agent run",
                     count=len(orphans))
        if self.isolation.accounts:
            removed = await self.accounts.remove_all()
            if removed:
                log.info("removed {count} session account(s) left by a previous agent run",
                         count=len(removed))

    async def _stop_all(self) -> list[str]:
        ids = list(self._sessions)
        await defer.gatherResults(
            [defer.ensureDeferred(self._stop(sid)) for sid in ids], consumeErrors=True)
        if self.isolation is not None and self.isolation.accounts:
            await self.accounts.remove_all()
        return ids

    def shutdown(self) -> defer.Deferred[list[str]]:
        """The agent stops: its sessions are its children and stop with it."""
        return defer.ensureDeferred(self._stop_all())

    # -- queries -------------------------------------------------------------------------

    def list_sessions(self) -> list[SessionInfo]:
        live = [SessionInfo(s.session_id, RUNNING if s.state == "running" else STARTING)
                for s in self._sessions.values() if s.state in ("starting", "running")]
        return live + [SessionInfo(sid, HIBERNATED) for sid in sorted(self._hibernated)
                       if sid not in self._sessions]

    def vnc_socket(self, session_id: str) -> Path | None:
        """Where a running session's RFB socket is on the host (for logs and tests)."""
        sess = self._sessions.get(session_id)
        if sess is None or sess.state != "running":
            return None
        return self.store.sandbox_dir(session_id) / "vnc" / xvnc.RFB_SOCKET

    def vnc_endpoint(self, session_id: str) -> defer.Deferred:
        sess = self._sessions.get(session_id)
        if sess is None or sess.state != "running" or sess.vnc_dir_fd is None:
            return defer.fail(DriverError("the session is not running on this agent"))
        return defer.succeed(SessionVncEndpoint(
            self.reactor, sess, lambda s: self._sessions.get(s.session_id) is s))

    def usage(self) -> Usage:
        active = list(self._sessions.values())
        return Usage(sessions=len(active), cpu=sum(s.template.cpu for s in active),
                     memory_gb=sum(s.template.memory_mb for s in active) / 1024)

    # -- commands ------------------------------------------------------------------------

    # Deadlines are enforced by the executor, which cancels the Deferred: `_start` then
    # tears down what it began (its `except BaseException` branch).

    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str, deadline: float | None = None) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start(session_id, template, user, name, False))

    def wake_session(self, session_id: str, template: SessionTemplate,
                     user: UserRef | None, deadline: float | None = None
                     ) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._wake(session_id, template, user))

    def stop_session(self, session_id: str, deadline: float | None = None,
                     purge: bool = False) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop(session_id, purge))

    def hibernate_session(self, session_id: str, deadline: float | None = None
                          ) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._hibernate(session_id))

    async def _wake(self, session_id: str, template: SessionTemplate,
                    user: UserRef | None) -> None:
        check_session_id(session_id)
        record = self.store.load(session_id)
        if user is None and record is not None:
            user = record.user
        if user is None:
            if template.persistent_home:
                raise DriverError("cannot wake this session: the agent has no record of it "
                                  "and the command names no user to find its home")
            user = UserRef("unknown", "")
        name = record.name if record is not None else ""
        await self._start(session_id, template, user, name, True)

    async def _start(self, session_id: str, template: SessionTemplate, user: UserRef,
                     name: str, waking: bool) -> None:
        check_session_id(session_id)
        current = self._sessions.get(session_id)
        if current is not None and current.state == "stopping":
            # e.g. a Restart right after the application exited: its teardown (processes,
            # account) is still under way; start afresh once it is done
            await settled(current.stopped)
            current = self._sessions.get(session_id)
        if current is not None:
            if current.state == "starting":
                await settled(current.started)
            if current.state == "running":
                return
            raise DriverError("the session could not be started")
        command = template.platform("local").get("command")
        if not isinstance(command, str) or not command.strip():
            raise DriverError(f"template {template.name!r} cannot run on the local platform "
                              "(it has no platforms.local.command)")
        self._check_isolation(session_id, user)
        check_capacity(self.capacity, self.usage(), template)
        home = self.store.home_for(session_id, template, user)
        record = SessionRecord(session_id=session_id, template=template.name,
                               user_id=user.id, username=printable(user.username),
                               name=printable(name),
                               persistent_home=template.persistent_home, home=str(home),
                               state="starting")
        sess = LocalSession(record=record, template=template)
        self._sessions[session_id] = sess
        self._hibernated.pop(session_id, None)
        try:
            if self.isolation is not None and self.isolation.accounts:
                sess.account = await self.accounts.acquire(user.id, session_id)
            await self.store.prepare(record, owner_of(sess.account))
            await self._launch(sess, command)
        except BaseException as e:
            await self._abandon_start(sess, waking)
            if isinstance(e, OSError):
                raise DriverError(f"the session could not be started: {e.strerror or e}") from e
            if isinstance(e, procfs.MissingTool):
                raise DriverError(f"the session could not be started: {e}") from e
            raise
        sess.started.callback(None)
        log.info("session {session_id} running on display :{display} as {account}",
                 session_id=session_id, display=sess.display,
                 account=sess.account.name if sess.account else "the agent's user")

    async def _abandon_start(self, sess: LocalSession, waking: bool) -> None:
        """Undo a start that failed or was cancelled. Whatever fails here is logged, and
        `started` fires in any case: a stop or a start waiting for it must never hang."""
        try:
            try:
                await self._teardown(sess)
            except Exception:
                log.failure("stopping session {session_id} after its start failed",
                            session_id=sess.session_id)
            if waking:  # the session stays hibernated: its record and home are kept
                sess.record.state = "hibernated"
                self.store.save(sess.record)
                self._hibernated[sess.session_id] = sess.record.user_id
            else:
                await self.store.forget(sess.session_id,
                                        keep_home=sess.template.persistent_home)
        except Exception:
            log.failure("forgetting session {session_id} after its start failed",
                        session_id=sess.session_id)
        finally:
            sess.started.callback(None)

    def _check_isolation(self, session_id: str, user: UserRef) -> None:
        """Refuse what this machine cannot run safely, saying why (see `sandbox.probe`)."""
        iso = self.isolation
        if iso is None:
            raise DriverError("the local platform is still starting; try again in a moment")
        if iso.refuse_all:
            raise DriverError(f"this agent cannot run sessions safely: {iso.problem}")
        if iso.isolated:
            return
        owners = {s.record.user_id for s in self._sessions.values()}
        owners.update(uid for sid, uid in self._hibernated.items() if sid != session_id)
        if owners - {user.id}:
            raise DriverError(
                "this agent already runs sessions of another user and cannot isolate users "
                f"from each other ({iso.problem}); try again when those have ended")

    async def _launch(self, sess: LocalSession, command: str) -> None:
        await self.runner.launch(sess, command)
        assert sess.xvnc is not None and sess.app is not None
        sess.xvnc.wait().addCallback(lambda _: self._process_ended(sess, "xvnc"))
        sess.app.wait().addCallback(lambda _: self._process_ended(sess, "app"))

    async def _stop(self, session_id: str, purge: bool = False) -> None:
        check_session_id(session_id)
        sess = self._sessions.get(session_id)
        keep_home = False
        if sess is not None:
            keep_home = sess.template.persistent_home
            await self._halt(sess)
        else:
            record = self.store.load(session_id)
            keep_home = bool(record and record.persistent_home)
        self._hibernated.pop(session_id, None)
        await self.store.forget(session_id, keep_home=keep_home and not purge)
        log.info("session {session_id} stopped", session_id=session_id)

    async def _hibernate(self, session_id: str) -> None:
        check_session_id(session_id)
        sess = self._sessions.get(session_id)
        if sess is None:
            record = self.store.load(session_id)
            if record is not None and record.state in ("hibernated", "ended"):
                record.state = "hibernated"
                self.store.save(record)
                self._hibernated[session_id] = record.user_id
                return
            raise DriverError("the session is not running on this agent")
        await self._halt(sess)
        sess.record.state = "hibernated"
        self.store.save(sess.record)
        self._hibernated[session_id] = sess.record.user_id
        log.info("session {session_id} hibernated", session_id=session_id)

    async def _halt(self, sess: LocalSession) -> None:
        """Bring a session of ours to no processes at all, whatever state it is in."""
        if sess.state == "starting":
            sess.aborted = True
            await settled(sess.started)
        if sess.state == "stopping":
            await settled(sess.stopped)
        elif self._sessions.get(sess.session_id) is sess:
            await self._teardown(sess)

    # -- processes -----------------------------------------------------------------------

    def _process_ended(self, sess: LocalSession, which: str) -> None:
        """A session process ended; if nobody asked for it, tell the control plane."""
        if sess.state != "running" or self._sessions.get(sess.session_id) is not sess:
            return
        proc = sess.xvnc if which == "xvnc" else sess.app
        assert proc is not None
        tail = proc.log_tail(200)
        if which == "xvnc":
            state = "failed"
            reason = f"the VNC server {proc.exit_description()}"
        elif isinstance(proc.ended, ProcessDone):
            state, reason = "stopped", "the application exited"
        else:
            state = "failed"
            reason = f"the application {proc.exit_description()}"
        if state == "failed" and tail:
            reason = f"{reason} (last output: {tail})"
        log.warn("session {session_id} ended on its own: {reason}",
                 session_id=sess.session_id, reason=reason)
        sess.record.state = "ended"
        self.store.save(sess.record)
        self.report_status(sess.session_id, state, reason)
        defer.ensureDeferred(self._teardown(sess)).addErrback(
            lambda f: log.failure("cleaning up session {session_id}", f,
                                  session_id=sess.session_id))

    async def _teardown(self, sess: LocalSession) -> None:
        """Stop everything of the session. Each step runs even if one before it failed
        (a failure is logged): a half-torn-down session would keep its account."""
        sess.state = "stopping"

        async def step(what: str, action) -> None:
            try:
                await action()
            except Exception:
                log.failure("stopping session {session_id}: {what}",
                            session_id=sess.session_id, what=what)

        try:
            await step("its processes", lambda: self.runner.stop_processes(sess))
            await step("processes that left its group", lambda: self.runner.kill_escaped(sess))
            await step("its sandbox directory",
                       lambda: self.store.discard_sandbox(sess.session_id))
        finally:
            try:
                self.runner.stop_reading(sess)
                if sess.account is not None:
                    sess.account = None
                    await self.accounts.release(sess.record.user_id, sess.session_id)
            finally:
                if self._sessions.get(sess.session_id) is sess:
                    del self._sessions[sess.session_id]
                if not self._sessions:
                    process_guard.kill_leftovers()  # nobody's session runs: nothing may
                if not sess.stopped.called:
                    sess.stopped.callback(None)


def build_driver(reactor, options, state_dir: Path, capacity: Capacity) -> LocalDriver:
    """PLATFORM=local (see agent/platforms/__init__.py)."""
    if shutil.which("Xvnc") is None:
        log.error("Xvnc is not installed (Debian: tigervnc-standalone-server): local "
                  "sessions will fail to start")
    return LocalDriver(reactor, state_dir, capacity,
                       allow_unsandboxed=options["local_allow_unsandboxed"] == "true",
                       hide=options["local_hide_paths"])
