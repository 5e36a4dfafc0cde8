"""One local session's processes: its state, how they start (Xvnc on a free display, then
the application) and how they stop. The driver (local.py) keeps the bookkeeping around
them: which sessions exist, accounts, records, what is reported to the control plane.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from agent.platforms import blocking, procgroup, xvnc
from agent.platforms.base import DriverError, SessionTemplate
from agent.platforms.local_accounts import Account
from agent.platforms.local_processes import ProcessLauncher, SessionLaunch
from agent.platforms.local_store import LocalStore, SessionRecord
from agent.platforms.local_vnc import CheckedSocketEndpoint

_GEOMETRY = re.compile(r"^\d{3,5}x\d{3,5}$")


@dataclass(eq=False)
class LocalSession:
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
        """The VNC socket, checked at each dial (local_vnc.py): a socket of the session's
        account (or of the agent's user, when sessions run as it)."""
        if self.vnc_dir_fd is None:
            raise ConnectError(string="the session's VNC server is gone")
        owner = self.account.uid if self.account is not None else os.geteuid()
        return CheckedSocketEndpoint(reactor, self.vnc_dir_fd, owner)


@implementer(IStreamClientEndpoint)
class SessionVncEndpoint:
    """The way to one running session's VNC server, checked when it is dialled: a session
    stopped in between (whose descriptor number may be reused) is refused, never reached
    through another session's socket."""

    def __init__(self, reactor, sess: LocalSession,
                 current: Callable[[LocalSession], bool]) -> None:
        self._reactor, self._sess, self._current = reactor, sess, current

    def connect(self, factory):
        sess = self._sess
        if not self._current(sess) or sess.state != "running":
            return defer.fail(ConnectError(string="the session is not running any more"))
        return sess.rfb_endpoint(self._reactor).connect(factory)


class SessionRunner:
    """Starts and stops the processes of local sessions."""

    def __init__(self, reactor, store: LocalStore, displays: xvnc.DisplayAllocator,
                 rfb_timeout: float, stop_grace: float) -> None:
        self.reactor, self.store, self.displays = reactor, store, displays
        self.rfb_timeout, self.stop_grace = rfb_timeout, stop_grace
        self.launcher = ProcessLauncher(reactor, None)  # replaced once isolation is known

    async def launch(self, sess: LocalSession, command: str) -> None:
        """Xvnc on a free display (up to three tries), once it speaks RFB the application;
        the session is then running."""
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
                if self.launcher.sandboxed and not xvnc.claim_display_lock(launch.display,
                                                                           proc.pid):
                    raise xvnc.RfbNotReady(f"another X server took display :{launch.display}")
                await xvnc.wait_for_rfb(self.reactor, lambda: sess.rfb_endpoint(self.reactor),
                                        self.rfb_timeout,
                                        gave_up=lambda p=proc: not p.running or sess.aborted)
                break
            except xvnc.RfbNotReady as e:
                problem = f"{e}: {proc.log_tail()}" if proc.log_tail() else str(e)
                await self.kill_display(sess)
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

    def _new_launch(self, sess: LocalSession, avoid: set[int]) -> SessionLaunch:
        """A display, a fresh sandbox directory and the agent's way to its VNC socket."""
        display = self.displays.allocate(avoid=avoid)
        sess.display = display
        paths = self.store.fresh_sandbox(sess.session_id, owner_of(sess.account))
        sess.vnc_dir_fd = os.open(paths.vnc, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return SessionLaunch(
            session_id=sess.session_id, display=display, paths=paths, home=sess.record.home,
            account=sess.account,
            markers=xvnc.x_environment_markers(self.store.root, sess.session_id),
            run_dir=self.store.run_dir(sess.session_id), vnc_dir_fd=sess.vnc_dir_fd)

    async def stop_processes(self, sess: LocalSession) -> None:
        """Xvnc and the application (both at once: an X client that ignores SIGTERM while
        it starts up still exits when its display goes away); raises the first failure
        once both are done."""
        stopping = [defer.ensureDeferred(self.kill_display(sess))]
        if sess.app is not None:
            stopping.append(defer.ensureDeferred(
                procgroup.terminate_group(sess.app, self.reactor, self.stop_grace)))
        for ok, failure in await defer.DeferredList(stopping, consumeErrors=True):
            if not ok:
                failure.raiseException()

    async def kill_escaped(self, sess: LocalSession) -> None:
        """Anything of the session that left its process group (daemons, setsid'd kids)
        and still carries its markers: found by a scan of the process table, on a thread."""
        markers = xvnc.x_environment_markers(self.store.root, sess.session_id)
        procgroup.kill_pids(await blocking.run(
            self.reactor, procgroup.pids_with_environ,
            *[f"{k}={v}" for k, v in markers.items()]))

    async def kill_display(self, sess: LocalSession) -> None:
        proc, display = sess.xvnc, sess.display
        if proc is not None:
            await procgroup.terminate_group(proc, self.reactor, self.stop_grace)
        if sess.vnc_dir_fd is not None:
            os.close(sess.vnc_dir_fd)
            sess.vnc_dir_fd = None
        if display is not None:
            if proc is not None:  # its own lock and socket, or our placeholder lock
                xvnc.remove_display_files(display, proc.pid,
                                          socket=not self.launcher.sandboxed)
            self.displays.release(display)
        sess.display = None

    @staticmethod
    def stop_reading(sess: LocalSession) -> None:
        """Close our ends of the session's output pipes (a process that escaped may still
        hold theirs)."""
        for proc in (sess.app, sess.xvnc):
            if proc is not None and proc.transport is not None:
                proc.transport.loseConnection()


def private_paths(state_dir: Path, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """What no sandbox may show even where it binds a system directory whole: the agent's
    state directory, the checkout the agent runs from (not a site-packages directory),
    and what the operator names (LOCAL_HIDE_PATHS, e.g. the control plane's state)."""
    paths = [str(Path(state_dir).absolute()), *(str(Path(p).absolute()) for p in extra if p)]
    code_root = Path(__file__).resolve().parents[2]
    if code_root.name not in ("site-packages", "dist-packages"):
        paths.append(str(code_root))
    return tuple(dict.fromkeys(paths))


def owner_of(account: Account | None) -> tuple[int, int] | None:
    return (account.uid, account.gid) if account is not None else None


def printable(text: str, limit: int = 128) -> str:
    """User-supplied names go into argv and the environment: no control characters."""
    return "".join(c for c in str(text) if c.isprintable())[:limit]


async def settled(d: defer.Deferred) -> None:
    """Wait for a notification Deferred (fires with None) without taking it from others."""
    waiter: defer.Deferred = defer.Deferred()

    def relay(result):
        waiter.callback(None)
        return result

    d.addBoth(relay)
    await waiter
