"""The agent process guards itself against the sessions it runs (`twistd agent` only).

- `PR_SET_DUMPABLE` 0: a process of the agent's own uid (sessions run as it when there is
  no account per user) can no longer read `/proc/<agent>/environ`, `mem`, `fd`... nor
  ptrace the agent; the kernel treats those files as root's. The agent's own children are
  dumpable again once they exec, so it still reads theirs.
- `PR_SET_CHILD_SUBREAPER`: a session process that double-forks or calls setsid() to
  leave its process group is reparented to the agent instead of init, so it stays below
  the agent, where `kill_leftovers` finds it whatever it did to its environment.
  Orphans that end are reaped here (`reap_orphans`, every few seconds): Twisted reaps
  only the children it spawned.

`engage` is called by `AgentService.startService` when `twistd agent` builds it (after
twistd daemonized: the subreaper flag is not inherited across fork), never in a test
runner's process, whose other children (a PostgreSQL, a dockerd) are not the agent's.
"""

from __future__ import annotations

import ctypes
import os
import signal

from twisted.internet import process as twisted_process
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from streamspace_common import procfs

log = Logger()

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
REAP_INTERVAL = 5.0

_reaper: LoopingCall | None = None


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def engage(reactor) -> None:
    """Make this process non-dumpable and a child subreaper, and start reaping orphans."""
    global _reaper
    try:
        _prctl(PR_SET_DUMPABLE, 0)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as e:  # Linux always allows both; say so loudly if this one does not
        log.error("could not harden the agent process against its sessions: {error}",
                  error=e)
        return
    if _reaper is None:
        _reaper = LoopingCall(reap_orphans)
        _reaper.clock = reactor
        _reaper.start(REAP_INTERVAL, now=False)
    log.info("agent process hardened: not dumpable, subreaper of its sessions' orphans")


def engaged() -> bool:
    return _reaper is not None


def _tracked() -> set[int]:
    """Children the reactor spawned and still waits for (Twisted's own table)."""
    return set(twisted_process.reapProcessHandlers)


def orphans() -> list[int]:
    """Direct children of the agent that Twisted did not spawn: reparented orphans."""
    tracked = _tracked()
    return [pid for pid in procfs.children(os.getpid()) if pid not in tracked]


def reap_orphans() -> int:
    """Collect the exit status of orphans that have ended; returns how many."""
    reaped = 0
    for pid in orphans():
        if procfs.state_of(pid) != "Z":
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
        except ChildProcessError:
            continue
    return reaped


def leftovers() -> list[int]:
    """Every live descendant of the agent outside the process trees the reactor still
    tracks (a zombie has ended already: it is only waiting to be reaped)."""
    keep: set[int] = set()
    for pid in _tracked():
        keep.add(pid)
        keep.update(procfs.descendants(pid))
    return [pid for pid in procfs.descendants(os.getpid())
            if pid not in keep and procfs.state_of(pid) not in (None, "Z")]


def kill_leftovers() -> list[int]:
    """SIGKILL whatever still runs below the agent that no running process of ours leads
    (only when engaged; a process that is not the agent kills nothing)."""
    if not engaged():
        return []
    reap_orphans()  # e.g. a sandbox's init, which dies with its bwrap and lands here
    found = leftovers()
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if found:
        log.warn("killed {count} process(es) left by sessions that ended", count=len(found))
    return found
