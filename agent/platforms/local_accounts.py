"""Per-user Unix accounts for local sessions (the agent runs as root).

Each StreamSpace user's sessions on this agent run as an unprivileged account of their own,
so one user's session can neither read another's files nor signal their processes, and none
runs as root. Policy: an account exists exactly while its user has a session starting or
running here. It is created (`useradd`) when the first one starts and removed (`userdel`,
after killing anything still running as it) when the last one stops, hibernates or dies;
also at agent start-up (a killed agent's accounts) and by `remove_all` at shutdown. Homes
kept across sessions (persistent homes, hibernated sessions) outlive the account: the next
account of that user may get another uid, so the driver re-owns a kept home before use.
Those homes live where only root can reach them and are mounted only into their owner's
sandbox, so a stale uid on them gives nobody access.

Accounts are named `ss-<13 hex digits>`, a hash of the agent's state directory and the user
id (several agents on one machine never share an account), have no password, the shell
/usr/sbin/nologin, a group of their own and no subordinate uid ranges; the comment field
carries the agent's tag so its accounts are found again after a crash.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from agent.platforms import procgroup
from agent.platforms.base import DriverError

log = Logger()

_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
NOLOGIN = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
# useradd/userdel lock /etc/passwd; another process doing the same makes them fail for a
# moment (exit 1 or 10), so they are retried.
_RETRIES = 8
_USERADD_NAME_IN_USE = 9
_USERDEL_NO_SUCH_USER = 6
_USERDEL_IN_USE = 8
# One passwd change at a time from this process (several drivers may share it in tests).
_passwd_lock = defer.DeferredLock()


def agent_tag(state_dir: Path) -> str:
    """A short, stable name of one agent (its state directory) for its accounts."""
    return hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:12]


def comment_for(tag: str) -> str:
    return f"StreamSpace session account {tag}"


def accounts_of(tag: str) -> list[pwd.struct_passwd]:
    """The accounts this agent created (found by the tag in their comment field)."""
    mark = comment_for(tag)
    return [p for p in pwd.getpwall() if p.pw_gecos == mark]


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    @property
    def home(self) -> str:
        """The home as the session sees it (its passwd entry and its sandbox's mount)."""
        return f"/home/{self.name}"


def _tool(name: str) -> str:
    found = shutil.which(name, path=_SBIN)
    if found is None:
        raise DriverError(f"{name} is not installed (Debian: passwd); the agent needs it to "
                          "give each user an account of their own")
    return found


class AccountManager:
    """Creates and removes the accounts of one agent, counting who holds each."""

    def __init__(self, reactor, state_dir: Path) -> None:
        self.reactor = reactor
        self.tag = agent_tag(state_dir)
        self._holders: dict[str, set[str]] = {}  # user id -> session ids using its account
        self._locks: dict[str, defer.DeferredLock] = {}

    def name_for(self, user_id: str) -> str:
        return "ss-" + hashlib.sha256(f"{self.tag}\0{user_id}".encode()).hexdigest()[:13]

    def _lock(self, user_id: str) -> defer.DeferredLock:
        return self._locks.setdefault(user_id, defer.DeferredLock())

    async def acquire(self, user_id: str, session_id: str) -> tuple[Account, bool]:
        """The user's account, held for `session_id` until `release`, and whether it was
        just created (its uid may differ from the one that owns the user's kept homes)."""
        self._holders.setdefault(user_id, set()).add(session_id)
        try:
            async with self._lock(user_id):
                return await self._ensure(self.name_for(user_id))
        except BaseException:
            await self.release(user_id, session_id)
            raise

    async def release(self, user_id: str, session_id: str) -> None:
        """`session_id` no longer runs; the last one out removes the account."""
        holders = self._holders.get(user_id, set())
        holders.discard(session_id)
        async with self._lock(user_id):
            if self._holders.get(user_id):
                return
            self._holders.pop(user_id, None)
            await self._remove(self.name_for(user_id))

    async def remove_all(self) -> list[str]:
        """Remove every account of this agent that no session holds (start-up, shutdown)."""
        held = {self.name_for(uid) for uid, sids in self._holders.items() if sids}
        removed = []
        for entry in accounts_of(self.tag):
            if entry.pw_name not in held:
                await self._remove(entry.pw_name)
                removed.append(entry.pw_name)
        return removed

    async def _ensure(self, name: str) -> tuple[Account, bool]:
        existing = self._lookup(name)
        if existing is not None:
            return existing, False
        argv = ["--no-create-home", "--home-dir", f"/home/{name}", "--shell", NOLOGIN,
                "--user-group", "--comment", comment_for(self.tag), "--no-log-init",
                "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name]
        await self._run("useradd", argv, ok=(0, _USERADD_NAME_IN_USE))
        account = self._lookup(name)
        if account is None:
            raise DriverError(f"the session account {name} could not be created")
        log.info("created session account {name} (uid {uid})", name=name, uid=account.uid)
        return account, True

    def _lookup(self, name: str) -> Account | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        if entry.pw_gecos != comment_for(self.tag) or entry.pw_uid == 0:
            raise DriverError(f"the account {name} exists but was not made by this agent; "
                              "it will not run sessions as it")
        return Account(name, entry.pw_uid, entry.pw_gid)

    async def _remove(self, name: str) -> None:
        account = self._lookup(name)
        if account is None:
            return
        for _attempt in range(_RETRIES):
            procgroup.kill_pids(procgroup.pids_of_uid(account.uid))
            code, err = await self._exec("userdel", [name])
            if code in (0, _USERDEL_NO_SUCH_USER):
                log.info("removed session account {name}", name=name)
                return
            await deferLater(self.reactor, 0.05, lambda: None)
        raise DriverError(f"the session account {name} could not be removed: {err}")

    async def _run(self, tool: str, args: list[str], ok: tuple[int, ...]) -> None:
        err = ""
        for attempt in range(_RETRIES):
            code, err = await self._exec(tool, args)
            if code in ok:
                return
            await deferLater(self.reactor, 0.05 * (attempt + 1), lambda: None)
        raise DriverError(f"{tool} failed: {err}")

    async def _exec(self, tool: str, args: list[str]) -> tuple[int, str]:
        async with _passwd_lock:
            out, err, code = await getProcessOutputAndValue(
                _tool(tool), args, env={"PATH": _SBIN, "LANG": "C"}, reactor=self.reactor)
        text = (err or out).decode(errors="replace").strip().splitlines()
        return code, (text[-1] if text else f"exit status {code}")
