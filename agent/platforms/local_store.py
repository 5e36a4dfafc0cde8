"""On-disk state of the local driver: session records, logs and homes.

Layout under the agent's state directory (every directory 0700, the agent's own):

    sessions/<session_id>/session.json   who/what the session is, its state and pids
    sessions/<session_id>/xvnc.log       Xvnc output;  app.log: the template command's
    sessions/<session_id>/sandbox/       made afresh at each (re)start, removed at stop:
        tmp/                             the session's private /tmp (X socket and lock)
        vnc/rfb.sock                     its Xvnc's RFB socket
        Xauthority                       its X display's cookie
    homes/sessions/<session_id>          HOME of a session without a persistent home
    homes/users/<user_id>/<template>     HOME kept for a user and template (persistent_home)

What the session's account must use (its home, tmp/, vnc/, Xauthority) is owned by that
account; everything else stays the agent's, so a session reaches only what its sandbox
mounts. The record survives hibernate (and agent restarts), so wake finds the same home
again. Large trees are deleted (through trash/, swept again at start-up) and re-owned on
the local platform's thread pool, never on the reactor.

Re-owning a kept home (its user's account got another uid after a collision, see
local_accounts.py) runs as root over a tree the session wrote, so it must not be steered
out of the home: it walks with `os.fwalk` (directory descriptors, never a symlink
followed), changes each entry relative to its directory's descriptor without following
a symlink, changes only what the home's previous owner owned (a hard link to a file of
someone else's stays theirs), and the top directory last (a walk cut short is done again
next time). A per-home lock keeps a second session of the same home from starting before
the walk is over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer

from agent.platforms import blocking
from agent.platforms.base import DriverError, SessionTemplate, UserRef

Owner = tuple[int, int]  # (uid, gid) of a session's account; None: the agent's own user

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not _ID.match(session_id) or ".." in session_id:
        raise DriverError(f"{session_id!r} is not a valid session id")
    return session_id


@dataclass
class SessionRecord:
    session_id: str
    template: str
    user_id: str
    username: str
    name: str
    persistent_home: bool
    home: str
    state: str  # starting, running, hibernated, ended
    display: int | None = None
    xvnc_pid: int | None = None
    app_pid: int | None = None

    @property
    def user(self) -> UserRef:
        return UserRef(self.user_id, self.username)


class LocalStore:
    def __init__(self, state_dir: Path, reactor) -> None:
        self.root = Path(state_dir).absolute()
        self.reactor = reactor
        self.sessions_dir = self.root / "sessions"
        self.homes_dir = self.root / "homes"
        self._trash = self.root / "trash"
        self._home_locks: dict[str, defer.DeferredLock] = {}

    def run_dir(self, session_id: str) -> Path:
        return self.sessions_dir / session_id

    def home_for(self, session_id: str, template: SessionTemplate, user: UserRef) -> Path:
        if template.persistent_home:
            return self.homes_dir / "users" / user.id / template.name
        return self.homes_dir / "sessions" / session_id

    def sandbox_dir(self, session_id: str) -> Path:
        return self.run_dir(session_id) / "sandbox"

    async def prepare(self, record: SessionRecord, owner: Owner | None) -> None:
        """The record's directories, its home owned by `owner` (re-owned, safely and off
        the reactor, when it belonged to another uid)."""
        for path in (self.sessions_dir, self.homes_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir(record.session_id).mkdir(exist_ok=True, mode=0o700)
        home = Path(record.home)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.save(record)
        if owner is None:
            return
        lock = self._home_locks.setdefault(str(home), defer.DeferredLock())
        try:
            async with lock:
                await blocking.run(self.reactor, reown_tree, home, owner)
        finally:
            if not lock.locked and not lock.waiting:
                self._home_locks.pop(str(home), None)

    def fresh_sandbox(self, session_id: str, owner: Owner | None) -> SandboxPaths:
        """A new sandbox/ for a (re)start: an empty private /tmp, a VNC socket directory
        and a new X cookie, owned by the session's account."""
        self.discard_sandbox(session_id)
        paths = SandboxPaths(self.sandbox_dir(session_id))
        paths.root.mkdir(mode=0o700)
        for path in (paths.tmp, paths.vnc):
            path.mkdir(mode=0o700)
            if owner is not None:
                os.chown(path, *owner)
        x11 = paths.tmp / ".X11-unix"
        x11.mkdir()
        os.chmod(x11, 0o1777)  # as on a host: sticky, writable by the X server
        from agent.platforms.xvnc import write_xauthority

        write_xauthority(paths.xauthority, owner)
        return paths

    def discard_sandbox(self, session_id: str) -> defer.Deferred[None]:
        """Remove a session's sandbox/ (its /tmp, stale X lock and sockets included)."""
        return self._remove_trees([self.sandbox_dir(session_id)])

    def save(self, record: SessionRecord) -> None:
        """Write atomically (temp file + rename): a crash never leaves half a record."""
        path = self.run_dir(record.session_id) / "session.json"
        tmp = path.with_name(f".session.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, path)

    def load(self, session_id: str) -> SessionRecord | None:
        try:
            data = json.loads((self.run_dir(session_id) / "session.json").read_text())
            return SessionRecord(**data)
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[SessionRecord]:
        if not self.sessions_dir.is_dir():
            return []
        found = []
        for entry in sorted(self.sessions_dir.iterdir()):
            record = self.load(entry.name)
            if record is not None:
                found.append(record)
        return found

    def forget(self, session_id: str, keep_home: bool) -> defer.Deferred[None]:
        """Remove the session's record and logs, and its home unless it is kept."""
        doomed = [self.run_dir(session_id)]
        if not keep_home:
            # only ever the per-session home: persistent homes live under homes/users/
            doomed.append(self.homes_dir / "sessions" / session_id)
        return self._remove_trees(doomed)

    def _remove_trees(self, paths: list[Path]) -> defer.Deferred[None]:
        # A rename is instant, so the session's paths are free at once; the slow
        # recursive delete then runs on a thread, off the reactor.
        moved = []
        for path in paths:
            if not path.exists():
                continue
            self._trash.mkdir(parents=True, exist_ok=True)
            target = self._trash / uuid.uuid4().hex
            try:
                os.replace(path, target)
            except OSError:
                target = path
            moved.append(target)
        if not moved:
            return defer.succeed(None)

        def delete() -> None:
            for path in moved:
                shutil.rmtree(path, ignore_errors=True)

        return blocking.run(self.reactor, delete)

    def sweep_trash(self) -> defer.Deferred[None]:
        """Delete what a killed agent left in trash/ (a delete it had not finished)."""
        trash = self._trash

        def sweep() -> None:
            if trash.is_dir():
                for entry in trash.iterdir():
                    shutil.rmtree(entry, ignore_errors=True)

        return blocking.run(self.reactor, sweep)


@dataclass(frozen=True)
class SandboxPaths:
    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def vnc(self) -> Path:
        return self.root / "vnc"

    @property
    def xauthority(self) -> Path:
        return self.root / "Xauthority"


def reown_tree(top: Path, owner: Owner) -> bool:
    """Give a kept home to the user's current account, if it is not already theirs;
    returns whether it was re-owned. Blocking (a walk of the whole tree): run on a thread.

    Safe against the tree's contents (see the module's docstring): every entry is found
    and changed through its directory's descriptor, symlinks are changed themselves and
    never followed, and only entries of the previous owner are given away."""
    uid, gid = owner
    top_stat = os.stat(top, follow_symlinks=False)
    if not stat.S_ISDIR(top_stat.st_mode):
        raise DriverError(f"the home {top} is not a directory")
    previous = top_stat.st_uid
    if (previous, top_stat.st_gid) == (uid, gid):
        return False
    if previous != 0:  # a home the agent (root) just made has nothing in it to give away
        for _dirpath, dirnames, filenames, dir_fd in os.fwalk(top, follow_symlinks=False):
            for name in dirnames + filenames:
                try:
                    if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid == previous:
                        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue  # gone or replaced meanwhile: nothing of ours to change
    os.chown(top, uid, gid, follow_symlinks=False)
    return True
