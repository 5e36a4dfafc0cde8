"""The local platform driver: each session is an Xvnc display plus the template's command.

Per session: `Xvnc :N -rfbport P -localhost -SecurityTypes None ...` (only the agent reaches
it) and `/bin/sh -c <platforms.local.command>` with DISPLAY=:N and its own HOME, each in its
own process group. Stop kills both groups (SIGTERM, SIGKILL after a grace period), sweeps
anything of the session that escaped its group, and frees the display. Hibernate does the
same but keeps the home; wake starts again on it.

Shutdown policy (`outlives_agent` False): sessions are children of the agent, so stopping
the agent stops them (`shutdown`); a restarted agent reports only its hibernated sessions
and the control plane reconciles. An agent killed with SIGKILL leaves its sessions running
in their own groups: the next `start()` reaps every process still marked with this state
directory before the agent registers.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import ProcessDone
from twisted.logger import Logger

from agent.platforms import procgroup, xvnc
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
    VncEndpoint,
    check_capacity,
)
from agent.platforms.local_store import LocalStore, SessionRecord, check_session_id

log = Logger()

_GEOMETRY = re.compile(r"^\d{3,5}x\d{3,5}$")
LOOPBACK = "127.0.0.1"


@dataclass(eq=False)
class _Session:
    record: SessionRecord
    template: SessionTemplate
    state: str = "starting"  # starting -> running -> stopping
    display: int | None = None
    port: int | None = None
    xvnc: procgroup.GroupProcess | None = None
    app: procgroup.GroupProcess | None = None
    aborted: bool = False
    started: defer.Deferred = field(default_factory=defer.Deferred)
    stopped: defer.Deferred = field(default_factory=defer.Deferred)

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def endpoint(self) -> VncEndpoint | None:
        return VncEndpoint(LOOPBACK, self.port) if self.port else None


class LocalDriver(PlatformDriver):
    name = "local"

    def __init__(self, reactor, state_dir: Path, capacity: Capacity, *,
                 rfb_timeout: float = 15.0, stop_grace: float = 5.0,
                 displays: xvnc.DisplayAllocator | None = None) -> None:
        super().__init__(capacity)
        self.reactor = reactor
        self.store = LocalStore(state_dir, reactor)
        self.rfb_timeout, self.stop_grace = rfb_timeout, stop_grace
        self.displays = displays or xvnc.DisplayAllocator()
        self._sessions: dict[str, _Session] = {}
        self._hibernated: set[str] = set()  # records kept for a wake (cached: no disk reads
        # on the heartbeat path)

    # -- lifecycle of the driver -------------------------------------------------------

    def start(self) -> None:
        """Reap sessions a previous agent run left behind (it was killed, not stopped)."""
        marker = f"STREAMSPACE_AGENT_DIR={self.store.root}"
        orphans = procgroup.pids_with_environ(marker)
        procgroup.kill_pids(orphans)
        for record in self.store.records():
            if record.state in ("starting", "running"):
                if record.display is not None:
                    xvnc.remove_display_files(record.display, record.xvnc_pid)
                record.state = "ended"
                self.store.save(record)
            elif record.state == "hibernated":
                self._hibernated.add(record.session_id)
        if orphans:
            log.warn("reaped {count} process(es) left by a previous agent run",
                     count=len(orphans))

    async def _stop_all(self) -> list[str]:
        ids = list(self._sessions)
        await defer.gatherResults(
            [defer.ensureDeferred(self._stop(sid)) for sid in ids], consumeErrors=True)
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

    def vnc_address(self, session_id: str) -> VncEndpoint | None:
        """The TCP address of a running session's VNC server (for logs and tests)."""
        sess = self._sessions.get(session_id)
        return sess.endpoint if sess is not None and sess.state == "running" else None

    def vnc_endpoint(self, session_id: str) -> defer.Deferred:
        sess = self._sessions.get(session_id)
        if sess is None or sess.state != "running" or sess.endpoint is None:
            return defer.fail(DriverError("the session is not running on this agent"))
        return defer.succeed(sess.endpoint.client_endpoint(self.reactor))

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
        if current is not None:
            if current.state == "stopping":
                raise DriverError("the session is being stopped; try again in a moment")
            if current.state == "starting":
                await _settled(current.started)
            if current.state == "running" and current.endpoint:
                return
            raise DriverError("the session could not be started")
        command = template.platform("local").get("command")
        if not isinstance(command, str) or not command.strip():
            raise DriverError(f"template {template.name!r} cannot run on the local platform "
                              "(it has no platforms.local.command)")
        check_capacity(self.capacity, self.usage(), template)
        home = self.store.home_for(session_id, template, user)
        record = SessionRecord(session_id=session_id, template=template.name,
                               user_id=user.id, username=_printable(user.username),
                               name=_printable(name),
                               persistent_home=template.persistent_home, home=str(home),
                               state="starting")
        sess = _Session(record=record, template=template)
        self._sessions[session_id] = sess
        self._hibernated.discard(session_id)
        try:
            self.store.prepare(record)
            await self._launch(sess, command)
        except BaseException as e:
            await self._teardown(sess)
            if waking:
                record.state = "hibernated"
                self.store.save(record)
                self._hibernated.add(session_id)
            else:
                await self.store.forget(session_id, keep_home=template.persistent_home)
            sess.started.callback(None)
            if isinstance(e, OSError):
                raise DriverError(f"the session could not be started: {e.strerror or e}") from e
            raise
        sess.started.callback(None)
        log.info("session {session_id} running on display :{display}, VNC port {port}",
                 session_id=session_id, display=sess.display, port=sess.port)

    async def _launch(self, sess: _Session, command: str) -> VncEndpoint:
        local = sess.template.platform("local")
        geometry = str(local.get("geometry") or "1280x800")
        if not _GEOMETRY.match(geometry):
            raise DriverError(f"template geometry {geometry!r} is not WIDTHxHEIGHT")
        run_dir = self.store.run_dir(sess.session_id)
        markers = xvnc.x_environment_markers(self.store.root, sess.session_id)
        tried: set[int] = set()
        problem = ""
        for _attempt in range(3):
            display, port = self.displays.allocate(avoid=tried)
            tried.add(display)
            sess.display, sess.port = display, port
            argv = xvnc.xvnc_argv(display, port, geometry,
                                  desktop=(sess.record.name or sess.template.display_name
                                           or sess.template.name)[:64])
            env = {"PATH": xvnc.default_path(), "HOME": str(run_dir), **markers}
            proc = procgroup.spawn_in_group(self.reactor, "xvnc", argv, env, str(run_dir),
                                            run_dir / "xvnc.log")
            sess.xvnc = proc
            try:
                await xvnc.wait_for_rfb(self.reactor, LOOPBACK, port, self.rfb_timeout,
                                        gave_up=lambda p=proc: not p.running or sess.aborted)
                break
            except xvnc.RfbNotReady as e:
                problem = f"{e}: {proc.log_tail()}" if proc.log_tail() else str(e)
                await self._kill_display(sess)
                if sess.aborted:
                    raise DriverError("the session was stopped while it was starting") from e
        else:
            raise DriverError(f"the VNC server could not start ({problem})")
        app_env = {"PATH": xvnc.default_path(), "LANG": os.environ.get("LANG", "C.UTF-8")}
        for key in ("USER", "LOGNAME"):
            if os.environ.get(key):
                app_env[key] = os.environ[key]
        app_env.update(sess.template.env)
        app_env.update({"HOME": sess.record.home, "DISPLAY": f":{sess.display}",
                        "STREAMSPACE_USER": sess.record.username,
                        "STREAMSPACE_SESSION_NAME": sess.record.name, **markers})
        sess.app = procgroup.spawn_in_group(self.reactor, "app", ["/bin/sh", "-c", command],
                                            app_env, sess.record.home, run_dir / "app.log")
        sess.state = "running"
        sess.record.state = "running"
        sess.record.display = sess.display
        sess.record.xvnc_pid, sess.record.app_pid = sess.xvnc.pid, sess.app.pid
        self.store.save(sess.record)
        sess.xvnc.wait().addCallback(lambda _: self._process_ended(sess, "xvnc"))
        sess.app.wait().addCallback(lambda _: self._process_ended(sess, "app"))
        assert sess.endpoint is not None
        return sess.endpoint

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
        self._hibernated.discard(session_id)
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
                self._hibernated.add(session_id)
                return
            raise DriverError("the session is not running on this agent")
        await self._halt(sess)
        sess.record.state = "hibernated"
        self.store.save(sess.record)
        self._hibernated.add(session_id)
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
        finally:
            if self._sessions.get(sess.session_id) is sess:
                del self._sessions[sess.session_id]
            if not sess.stopped.called:
                sess.stopped.callback(None)

    async def _kill_display(self, sess: _Session) -> None:
        proc, display, port = sess.xvnc, sess.display, sess.port
        if proc is not None:
            await procgroup.terminate_group(proc, self.reactor, self.stop_grace)
        if display is not None and port is not None:
            xvnc.remove_display_files(display, proc.pid if proc else None)
            self.displays.release(display, port)
        sess.display = sess.port = None


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
