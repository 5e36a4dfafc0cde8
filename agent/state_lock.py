"""One agent per state directory: an exclusive `flock` on `<state dir>/agent.lock`.

Two agents on one directory would share a journal and reap each other's sessions (the
local driver kills every process marked with the directory when it starts: issue 9, a
second agent killed the first one's sessions). The lock is taken before the driver is
built and held for the life of the process; the kernel drops it when the process dies,
however it dies, so a crashed agent never blocks its successor. The file holds the pid
of the holder, to name it in the refusal. The descriptor is close-on-exec, so session
processes never inherit (and never keep) the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "agent.lock"


class StateDirLocked(SystemExit):
    """Another live agent holds the directory; twistd prints this and exits non-zero."""

    def __init__(self, state_dir: Path, holder: str) -> None:
        self.state_dir, self.holder = state_dir, holder
        super().__init__(
            f"agent: the state directory {state_dir} is in use by another agent "
            f"({holder}); stop that agent first, or give this one its own AGENT_STATE_DIR")


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StateDirLock:
        """Take the lock now or raise StateDirLocked naming the holder's pid."""
        if self._fd is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise StateDirLocked(self.state_dir, self._holder()) from None
        self._fd = fd
        self.record_pid()
        return self

    def record_pid(self) -> None:
        """Write our pid (again after twistd daemonizes: the pid changes, the lock stays)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor drops the flock

    def _holder(self) -> str:
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return "pid unknown"
        return f"pid {pid}"
