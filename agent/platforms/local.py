"""The local platform driver: each session is an Xvnc display plus the template's command.

Per session: Xvnc (RFB on a Unix socket only the agent reaches, X11 behind a cookie: see
xvnc.py) and `/bin/sh -c <platforms.local.command>` in that display, each in a bubblewrap
sandbox as the user's own Unix account (sandbox.py, local_accounts.py) and in its own
process group. Stop asks both to end (SIGTERM inside the sandbox, SIGKILL after a grace
period), sweeps anything of the session left, frees the display and, with the user's last
session, the account. Hibernate does the same but keeps the home; wake starts again on it.

What this machine can isolate is probed at `start()`. Without isolation (the agent is not
root, or bubblewrap cannot make namespaces) sessions of only one user run at a time, and a
start for another user fails saying why; as root without a sandbox, none runs.

Shutdown policy (`outlives_agent` False): sessions are children of the agent, so stopping
the agent stops them (`shutdown`), and sandboxes die with the agent (`--die-with-parent`)
even when it is killed. A restarted agent reports only its hibernated sessions and the
control plane reconciles; `start()` first reaps every process still marked with this
state directory, stale sandboxes (X locks and sockets) and this agent's accounts.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError, ProcessDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from agent.platforms import procgroup, sandbox, xvnc
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
from agent.platforms.local_accounts import Account, AccountManager
from agent.platforms.local_processes import ProcessLauncher, SessionLaunch
from agent.platforms.local_store import LocalStore, SessionRecord, check_session_id

log = Logger()

_GEOMETRY = re.compile(r"^\d{3,5}x\d{3,5}$")


@dataclass(eq=False)
class _Session:
    record: SessionRecord
    template: SessionTemplate
    state: str = "starting"  # starting -> running -> stopping
    display: int | None = None
    account: Account | None = None
    vnc_dir_fd: int | None = None  # open while Xvnc may listen: the way to its socket
    xvnc: procgroup.GroupProcess | None = None
    app: procgroup.GroupProcess | None = None
    aborted: bool = False
    started: defer.Deferred = field(default_factory=defer.Deferred)
    stopped: defer.Deferred = field(default_factory=defer.Deferred)

    @property
    def session_id(self) -> str:
        return self.record.session_id

    def rfb_endpoint(self, reactor) -> IStreamClientEndpoint:
        if self.vnc_dir_fd is None:
            raise ConnectError(string="the session's VNC server is gone")
        return UNIXClientEndpoint(reactor, f"/proc/self/fd/{self.vnc_dir_fd}/{xvnc.RFB_SOCKET}",
                                  timeout=10)


@implementer(IStreamClientEndpoint)
class SessionVncEndpoint:
    """The way to one running session's VNC server, checked when it is dialled: a session
    stopped in between (whose descriptor number may be reused) is refused, never reached
    through another session's socket."""

    def __init__(self, driver: LocalDriver, sess: _Session) -> None:
        self._driver, self._sess = driver, sess

    def connect(self, factory):
        sess = self._sess
        if self._driver._sessions.get(sess.session_id) is not sess or sess.state != "running":
            return defer.fail(ConnectError(string="the session is not running any more"))
        return sess.rfb_endpoint(self._driver.reactor).connect(factory)


class LocalDriver(PlatformDriver):
    name = "local"

    def __init__(self, reactor, state_dir: Path, capacity: Capacity, *,
                 rfb_timeout: float = 15.0, stop_grace: float = 5.0,
                 displays: xvnc.DisplayAllocator | None = None,
                 isolation: sandbox.Isolation | None = None) -> None:
        super().__init__(capacity)
        self.reactor = reactor
        self.store = LocalStore(state_dir, reactor)
        self.rfb_timeout, self.stop_grace = rfb_timeout, stop_grace
        self.displays = displays or xvnc.DisplayAllocator()
        self.isolation = isolation  # probed by start() unless given
        self.accounts = AccountManager(reactor, self.store.root)
        self.launcher = ProcessLauncher(reactor, None)
        self._sessions: dict[str, _Session] = {}
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
            self.isolation = await sandbox.probe(self.reactor)
        self.launcher = ProcessLauncher(self.reactor, self.isolation.bwrap)
        if self.isolation.refuse_all:
            log.error("local sessions cannot run on this agent: {problem}",
                      problem=self.isolation.problem)
        elif not self.isolation.isolated:
            log.warn("local sessions are not isolated from each other or from the agent "
                     "({problem}): this agent runs sessions of one user at a time",
                     problem=self.isolation.problem)
        marker = f"STREAMSPACE_AGENT_DIR={self.store.root}"
        orphans = procgroup.pids_with_environ(marker)
        procgroup.kill_pids(orphans)
        for record in self.store.records():
            if record.state in ("starting", "running"):
                # an Xvnc killed mid-start leaves its lock and socket: in the sandbox's
                # private /tmp (removed with it), or in the host's /tmp without a sandbox
                self.store.discard_sandbox(record.session_id)
                if record.display is not None and not self.launcher.sandboxed:
                    xvnc.remove_display_files(record.display, record.xvnc_pid)
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
        return defer.succeed(SessionVncEndpoint(self, sess))

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
            await _settled(current.stopped)
            current = self._sessions.get(session_id)
        if current is not None:
            if current.state == "starting":
                await _settled(current.started)
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
                               user_id=user.id, username=_printable(user.username),
                               name=_printable(name),
                               persistent_home=template.persistent_home, home=str(home),
                               state="starting")
        sess = _Session(record=record, template=template)
        self._sessions[session_id] = sess
        self._hibernated.pop(session_id, None)
        try:
            created = False
            if self.isolation is not None and self.isolation.accounts:
                sess.account, created = await self.accounts.acquire(user.id, session_id)
            await self.store.prepare(record, _owner(sess.account), reown=created)
            await self._launch(sess, command)
        except BaseException as e:
            await self._teardown(sess)
            if waking:
                record.state = "hibernated"
                self.store.save(record)
                self._hibernated[session_id] = record.user_id
            else:
                await self.store.forget(session_id, keep_home=template.persistent_home)
            sess.started.callback(None)
            if isinstance(e, OSError):
                raise DriverError(f"the session could not be started: {e.strerror or e}") from e
            raise
        sess.started.callback(None)
        log.info("session {session_id} running on display :{display} as {account}",
                 session_id=session_id, display=sess.display,
                 account=sess.account.name if sess.account else "the agent's user")

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

    async def _launch(self, sess: _Session, command: str) -> None:
        local = sess.template.platform("local")
        geometry = str(local.get("geometry") or "1280x800")
        if not _GEOMETRY.match(geometry):
            raise DriverError(f"template geometry {geometry!r} is not WIDTHxHEIGHT")
        desktop = (sess.record.name or sess.template.display_name or sess.template.name)[:64]
        tried: set[int] = set()
        problem = ""
        launch = None
        for _attempt in range(3):
            launch = self._new_launch(sess, avoid=tried)
            tried.add(launch.display)
            proc = self.launcher.xvnc(launch, geometry, desktop)
            sess.xvnc = proc
            # saved before waiting: a next agent run must find what a kill now leaves
            sess.record.display, sess.record.xvnc_pid = launch.display, proc.pid
            self.store.save(sess.record)
            try:
                await xvnc.wait_for_rfb(self.reactor, lambda: sess.rfb_endpoint(self.reactor),
                                        self.rfb_timeout,
                                        gave_up=lambda p=proc: not p.running or sess.aborted)
                break
            except xvnc.RfbNotReady as e:
                problem = f"{e}: {proc.log_tail()}" if proc.log_tail() else str(e)
                await self._kill_display(sess)
                if sess.aborted:
                    raise DriverError("the session was stopped while it was starting") from e
        else:
            raise DriverError(f"the VNC server could not start ({problem})")
        assert launch is not None
        sess.app = self.launcher.app(launch, command, sess.template.env,
                                     sess.record.username, sess.record.name)
        sess.state = "running"
        sess.record.state = "running"
        sess.record.app_pid = sess.app.pid
        self.store.save(sess.record)
        sess.xvnc.wait().addCallback(lambda _: self._process_ended(sess, "xvnc"))
        sess.app.wait().addCallback(lambda _: self._process_ended(sess, "app"))

    def _new_launch(self, sess: _Session, avoid: set[int]) -> SessionLaunch:
        """A display, a fresh sandbox directory and the agent's way to its VNC socket."""
        display = self.displays.allocate(avoid=avoid)
        sess.display = display
        paths = self.store.fresh_sandbox(sess.session_id, _owner(sess.account))
        sess.vnc_dir_fd = os.open(paths.vnc, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return SessionLaunch(
            session_id=sess.session_id, display=display, paths=paths, home=sess.record.home,
            account=sess.account,
            markers=xvnc.x_environment_markers(self.store.root, sess.session_id),
            run_dir=self.store.run_dir(sess.session_id), vnc_dir_fd=sess.vnc_dir_fd)

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

    async def _halt(self, sess: _Session) -> None:
        """Bring a session of ours to no processes at all, whatever state it is in."""
        if sess.state == "starting":
            sess.aborted = True
            await _settled(sess.started)
        if sess.state == "stopping":
            await _settled(sess.stopped)
        elif self._sessions.get(sess.session_id) is sess:
            await self._teardown(sess)

    # -- processes -----------------------------------------------------------------------

    def _process_ended(self, sess: _Session, which: str) -> None:
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

    async def _teardown(self, sess: _Session) -> None:
        sess.state = "stopping"
        try:
            # Both at once: an X client that ignores SIGTERM while it starts up still exits
            # when its display goes away.
            stopping = [defer.ensureDeferred(self._kill_display(sess))]
            if sess.app is not None:
                stopping.append(defer.ensureDeferred(
                    procgroup.terminate_group(sess.app, self.reactor, self.stop_grace)))
            await defer.gatherResults(stopping, consumeErrors=True)
            # anything of this session that left its process group (daemons, setsid'd kids)
            procgroup.kill_pids(procgroup.pids_with_environ(
                *[f"{k}={v}" for k, v in
                  xvnc.x_environment_markers(self.store.root, sess.session_id).items()]))
            self.store.discard_sandbox(sess.session_id)
            if sess.account is not None:
                sess.account = None
                await self.accounts.release(sess.record.user_id, sess.session_id)
        finally:
            if self._sessions.get(sess.session_id) is sess:
                del self._sessions[sess.session_id]
            if not sess.stopped.called:
                sess.stopped.callback(None)

    async def _kill_display(self, sess: _Session) -> None:
        proc, display = sess.xvnc, sess.display
        if proc is not None:
            await procgroup.terminate_group(proc, self.reactor, self.stop_grace)
        if sess.vnc_dir_fd is not None:
            os.close(sess.vnc_dir_fd)
            sess.vnc_dir_fd = None
        if display is not None:
            if not self.launcher.sandboxed:
                xvnc.remove_display_files(display, proc.pid if proc else None)
            self.displays.release(display)
        sess.display = None


def _owner(account: Account | None) -> tuple[int, int] | None:
    return (account.uid, account.gid) if account is not None else None


def _printable(text: str, limit: int = 128) -> str:
    """User-supplied names go into argv and the environment: no control characters."""
    return "".join(c for c in str(text) if c.isprintable())[:limit]


async def _settled(d: defer.Deferred) -> None:
    """Wait for a notification Deferred (fires with None) without taking it from others."""
    waiter: defer.Deferred = defer.Deferred()

    def relay(result):
        waiter.callback(None)
        return result

    d.addBoth(relay)
    await waiter


def build_driver(reactor, options, state_dir: Path, capacity: Capacity) -> LocalDriver:
    """PLATFORM=local (see agent/platforms/__init__.py)."""
    if shutil.which("Xvnc") is None:
        log.error("Xvnc is not installed (Debian: tigervnc-standalone-server): local "
                  "sessions will fail to start")
    return LocalDriver(reactor, state_dir, capacity)
