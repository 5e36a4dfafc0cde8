"""Session output kept to a bounded size: a log file of at most `limit` bytes plus one
rotated predecessor (`<name>.1`).

A session's stdout and stderr are pipes the agent reads (procgroup.py), never the agent's
files handed to the session: a session printing without end (`yes`) would otherwise fill
the state directory's filesystem, which under `make run` also holds the embedded
PostgreSQL. Writes are small appends to a local file, made on the reactor thread.
"""

from __future__ import annotations

import os
from pathlib import Path

LIMIT = 1 << 20  # bytes per file; at most twice this per log on disk


class BoundedLog:
    def __init__(self, path: Path, limit: int = LIMIT) -> None:
        self.path = Path(path)
        self.previous = self.path.with_name(self.path.name + ".1")
        self.limit = limit
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        if self._fd is None or not data:
            return
        if self._size + len(data) > self.limit:
            self._rotate()
        data = data[-self.limit:]
        try:
            os.write(self._fd, data)
        except OSError:
            return  # a full disk loses session output, never the agent
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        os.replace(self.path, self.previous)
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def size_on_disk(self) -> int:
        total = 0
        for path in (self.path, self.previous):
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total


def tail(path: Path, size: int = 4096) -> bytes:
    """The last `size` bytes written to the log at `path`, across its rotation."""
    data = b""
    for part in (path, path.with_name(path.name + ".1")):
        try:
            with open(part, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                f.seek(max(0, end - (size - len(data))))
                data = f.read() + data
        except OSError:
            pass
        if len(data) >= size:
            break
    return data
