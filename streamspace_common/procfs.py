"""Reading /proc, and finding the system tools (util-linux, passwd, bubblewrap) by path.

One place for what the control plane and the agent both read about processes: the pid list,
a process's argv, environment, real uid, children and pid namespace. Every reader answers
for a process that vanished or that we may not read (None or empty) instead of raising:
processes come and go while a scan runs.

The readers are plain blocking functions. A single process's files are cheap; a scan of
every pid (`pids()` then one reader each) grows with the machine's process table, so
reactor code runs scans on a thread.
"""

from __future__ import annotations

import os
import shutil

PROC = "/proc"
# Where system tools are looked up: never the caller's PATH, which a user may control.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PACKAGES = {"setsid": "util-linux", "setpriv": "util-linux", "unshare": "util-linux",
             "useradd": "passwd", "userdel": "passwd", "groupadd": "passwd",
             "bwrap": "bubblewrap"}


class MissingTool(LookupError):
    """A system program we need is not installed; the message names its Debian package."""


def tool(name: str) -> str:
    """The absolute path of a system program (setsid, setpriv, useradd, bwrap...)."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        package = _PACKAGES.get(name)
        hint = f" (Debian: {package})" if package else ""
        raise MissingTool(f"{name} is not installed{hint}")
    return found


def pids() -> list[int]:
    """Every process id visible in /proc now."""
    try:
        return [int(name) for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []


def _read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"{PROC}/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    """argv of `pid` (empty for a kernel thread, a zombie or a process that is gone)."""
    raw = _read(pid, "cmdline")
    if not raw:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ(pid: int) -> dict[str, str] | None:
    """The environment `pid` was started with, or None when it cannot be read (gone, or
    not ours to read: another uid, or a process that made itself non-dumpable)."""
    raw = _read(pid, "environ")
    if raw is None:
        return None
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            env[key.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    return env


def uid_of(pid: int) -> int | None:
    """The real user id of `pid` (from /proc/<pid>/status), None when it is gone."""
    raw = _read(pid, "status")
    if raw is None:
        return None
    for line in raw.splitlines():
        if line.startswith(b"Uid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def state_of(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, D, Z...), None when it is gone."""
    raw = _read(pid, "stat")
    if raw is None:
        return None
    try:
        return raw.rsplit(b")", 1)[1].split()[0].decode()
    except IndexError:
        return None


def children(pid: int) -> list[int]:
    """The direct children of `pid`, whichever of its threads forked them."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"{PROC}/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree (children first, then theirs)."""
    found: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child in children(parent):
            if child not in seen:
                seen.add(child)
                found.append(child)
                frontier.append(child)
    return found


def pid_namespace(pid: int) -> str | None:
    """An identifier of the pid namespace `pid` lives in (`pid:[4026531836]`)."""
    try:
        return os.readlink(f"{PROC}/{pid}/ns/pid")
    except OSError:
        return None
