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
again. Large trees are deleted (and re-owned) off the reactor thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

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

    def run_dir(self, session_id: str) -> Path:
        return self.sessions_dir / session_id

    def home_for(self, session_id: str, template: SessionTemplate, user: UserRef) -> Path:
        if template.persistent_home:
            return self.homes_dir / "users" / user.id / template.name
        return self.homes_dir / "sessions" / session_id

    def sandbox_dir(self, session_id: str) -> Path:
        return self.run_dir(session_id) / "sandbox"

    def prepare(self, record: SessionRecord, owner: Owner | None, reown: bool = False
                ) -> defer.Deferred[None]:
        """The record's directories, its home owned by `owner`: a kept home is re-owned
        (the whole tree, off the reactor) when `reown` (the user's account is new) or when
        it belonged to another uid."""
        for path in (self.sessions_dir, self.homes_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir(record.session_id).mkdir(exist_ok=True, mode=0o700)
        home = Path(record.home)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.save(record)
        if owner is None or (not reown and home.stat().st_uid == owner[0]):
            return defer.succeed(None)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         _chown_tree, home, owner)

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

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), delete)


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


def _chown_tree(top: Path, owner: Owner) -> None:
    """Give a kept home to the user's current account (symlinks themselves, not targets)."""
    uid, gid = owner
    os.lchown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            try:
                os.lchown(os.path.join(dirpath, name), uid, gid)
            except OSError:
                pass
