"""Per-user Unix accounts for local sessions (the agent runs as root).

Each StreamSpace user's sessions on this agent run as an unprivileged account of their own,
so one user's session can neither read another's files nor signal their processes, and none
runs as root. Policy: an account exists exactly while its user has a session starting or
running here. It is created (`useradd`) when the first one starts and removed (`userdel`,
after killing anything still running as it) when the last one stops, hibernates or dies;
also at agent start-up (a killed agent's accounts) and by `remove_all` at shutdown.

Homes kept across sessions (persistent homes, hibernated sessions) outlive the account, so
each user gets the same uid every time: `uid_for` derives it from the agent and the user
id inside a reserved range (`UID_BASE`, `UID_COUNT`: above every range Debian, systemd and
useradd hand out), skipping uids or gids already in use and the subordinate ranges of
/etc/subuid and /etc/subgid (probing onwards, `_PROBES` at most). A kept home is then
re-owned only after such a collision, never as a matter of course (local_store.py does it
safely). Those homes live where only root can reach them and are mounted only into their
owner's sandbox, so a stale uid on them gives nobody access.

Accounts are named `ss-<13 hex digits>`, a hash of the agent's state directory and the user
id (several agents on one machine never share an account), have no password, the shell
/usr/sbin/nologin, a group of their own with the same id and no subordinate uid ranges; the
comment field carries the agent's tag so its accounts are found again after a crash. Every
name-service lookup (`pwd`, `grp`: files, or LDAP/sssd over the network) and process-table
scan runs on the local platform's thread pool (blocking.py), never on the reactor.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from agent.platforms import blocking, procgroup
from agent.platforms.base import DriverError
from streamspace_common import procfs

log = Logger()

_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
NOLOGIN = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
# useradd/userdel lock /etc/passwd; another process doing the same makes them fail for a
# moment (exit 1 or 10), so they are retried.
_RETRIES = 8
_USERADD_UID_IN_USE = 4  # also "cannot get the gid asked for"
_USERADD_NAME_IN_USE = 9
_USERDEL_NO_SUCH_USER = 6
_USERDEL_IN_USE = 8
# One passwd change at a time from this process (several drivers may share it in tests).
_passwd_lock = defer.DeferredLock()

UID_BASE = 0x7000_0000  # 1879048192: past systemd's container ranges, below 2^31
UID_COUNT = 1 << 24
_PROBES = 64
SUBORDINATE_FILES = ("/etc/subuid", "/etc/subgid")


def agent_tag(state_dir: Path) -> str:
    """A short, stable name of one agent (its state directory) for its accounts."""
    return hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:12]


def comment_for(tag: str) -> str:
    return f"StreamSpace session account {tag}"


def accounts_of(tag: str) -> list[pwd.struct_passwd]:
    """The accounts this agent created (found by the tag in their comment field).
    Enumerates the name service: call it on a thread."""
    mark = comment_for(tag)
    return [p for p in pwd.getpwall() if p.pw_gecos == mark]


def uid_for(tag: str, user_id: str) -> int:
    """The uid a user's account gets on this agent unless that one is taken."""
    digest = hashlib.sha256(f"{tag}\0{user_id}".encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_COUNT


def subordinate_ranges(files: Iterable[str] | None = None) -> list[range]:
    """The uid/gid ranges /etc/subuid and /etc/subgid delegate (`name:first:count`): a
    user owning such a range can make processes and files with those ids, so no session
    account may have one."""
    found: list[range] = []
    for path in SUBORDINATE_FILES if files is None else files:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                found.append(range(int(parts[1]), int(parts[1]) + int(parts[2])))
    return found


def free_uid(preferred: int, skip: set[int]) -> int | None:
    """The first id from `preferred` on (wrapping inside the reserved range) that no user,
    no group and no subordinate range has, and not in `skip`. Name-service lookups: call
    it on a thread."""
    delegated = subordinate_ranges()
    for step in range(_PROBES):
        uid = UID_BASE + (preferred - UID_BASE + step) % UID_COUNT
        if uid in skip or any(uid in r for r in delegated):
            continue
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)
            continue
        except KeyError:
            return uid
    return None


def _lookup(name: str, tag: str) -> Account | None:
    """The account `name` if this agent made it (a name-service lookup: on a thread)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_gecos != comment_for(tag) or entry.pw_uid == 0:
        raise DriverError(f"the account {name} exists but was not made by this agent; "
                          "it will not run sessions as it")
    return Account(name, entry.pw_uid, entry.pw_gid)


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
    try:
        return procfs.tool(name)
    except procfs.MissingTool as e:
        raise DriverError(f"{e}; the agent needs it to give each user an account of their "
                          "own") from None


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

    async def acquire(self, user_id: str, session_id: str) -> Account:
        """The user's account, held for `session_id` until `release`."""
        self._holders.setdefault(user_id, set()).add(session_id)
        try:
            async with self._lock(user_id):
                return await self._ensure(self.name_for(user_id), user_id)
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
        for entry in await blocking.run(self.reactor, accounts_of, self.tag):
            if entry.pw_name not in held:
                await self._remove(entry.pw_name)
                removed.append(entry.pw_name)
        return removed

    def _find(self, name: str) -> defer.Deferred[Account | None]:
        return blocking.run(self.reactor, _lookup, name, self.tag)

    async def _ensure(self, name: str, user_id: str) -> Account:
        existing = await self._find(name)
        if existing is not None:
            return existing
        preferred, taken, err = uid_for(self.tag, user_id), set(), ""
        for attempt in range(_RETRIES):
            uid = await blocking.run(self.reactor, free_uid, preferred, taken)
            if uid is None:
                raise DriverError(f"no free uid for the session account {name} near {preferred}")
            argv = ["--no-create-home", "--home-dir", f"/home/{name}", "--shell", NOLOGIN,
                    "--uid", str(uid), "--user-group", "-K", f"GID_MIN={uid}",
                    "-K", f"GID_MAX={uid}", "--comment", comment_for(self.tag),
                    "--no-log-init", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name]
            code, err = await self._exec("useradd", argv)
            if code in (0, _USERADD_NAME_IN_USE):
                break
            if code == _USERADD_UID_IN_USE:
                taken.add(uid)  # made by someone else since we looked: the next one
                continue
            await deferLater(self.reactor, 0.05 * (attempt + 1), lambda: None)
        else:
            raise DriverError(f"useradd failed: {err}")
        account = await self._find(name)
        if account is None:
            raise DriverError(f"the session account {name} could not be created")
        log.info("created session account {name} (uid {uid})", name=name, uid=account.uid)
        return account

    async def _remove(self, name: str) -> None:
        account = await self._find(name)
        if account is None:
            return
        err = ""
        for _attempt in range(_RETRIES):
            procgroup.kill_pids(await blocking.run(self.reactor, procgroup.pids_of_uid,
                                                   account.uid))
            code, err = await self._exec("userdel", [name])
            if code in (0, _USERDEL_NO_SUCH_USER):
                log.info("removed session account {name}", name=name)
                return
            await deferLater(self.reactor, 0.05, lambda: None)
        raise DriverError(f"the session account {name} could not be removed: {err}")

    async def _exec(self, tool: str, args: list[str]) -> tuple[int, str]:
        async with _passwd_lock:
            out, err, code = await getProcessOutputAndValue(
                _tool(tool), args, env={"PATH": _SBIN, "LANG": "C"}, reactor=self.reactor)
        lines = [line for line in (err or out).decode(errors="replace").strip().splitlines()
                 if "warning" not in line]  # useradd warns that our uids are past UID_MAX
        return code, (lines[-1] if lines else f"exit status {code}")
