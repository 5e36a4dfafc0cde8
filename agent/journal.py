"""The executed-command journal: what makes redelivered commands run at most once.

Delivery is at least once (docs/protocol.md), so the agent remembers every command id it
has started and the outcome it reported, in `<state dir>/commands.jsonl`, one JSON object
per line: `{"id", "status": "started"|"complete"|"failed", "type", "payload"}`. The last line
for an id wins. Appends are small and not fsynced (a page-cache write, microseconds), so
they are done on the reactor thread; the file is rewritten compactly once it holds twice
`max_entries` lines, keeping only the newest `max_entries` ids.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

log = Logger()

STARTED, COMPLETE, FAILED = "started", "complete", "failed"


@dataclass(frozen=True)
class JournalEntry:
    command_id: str
    status: str
    command_type: str
    payload: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in (COMPLETE, FAILED)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.command_id, "status": self.status, "type": self.command_type,
                "payload": self.payload}


class CommandJournal:
    def __init__(self, path: Path, max_entries: int = 5000) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._entries: OrderedDict[str, JournalEntry] = OrderedDict()
        self._lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    self._lines += 1
                    try:
                        data = json.loads(line)
                        entry = JournalEntry(str(data["id"]), str(data["status"]),
                                             str(data.get("type") or ""), data.get("payload"))
                    except (ValueError, KeyError, TypeError):
                        continue  # e.g. a line cut short by a crash
                    self._remember(entry)
        except FileNotFoundError:
            return

    def _remember(self, entry: JournalEntry) -> None:
        self._entries.pop(entry.command_id, None)
        self._entries[entry.command_id] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, command_id: str) -> JournalEntry | None:
        return self._entries.get(command_id)

    def __len__(self) -> int:
        return len(self._entries)

    def started(self, command_id: str, command_type: str) -> None:
        self._append(JournalEntry(command_id, STARTED, command_type))

    def finished(self, command_id: str, command_type: str, status: str,
                 payload: dict[str, Any]) -> None:
        assert status in (COMPLETE, FAILED)
        self._append(JournalEntry(command_id, status, command_type, payload))

    def _append(self, entry: JournalEntry) -> None:
        self._remember(entry)
        try:
            self._file.write(json.dumps(entry.to_json(), separators=(",", ":")) + "\n")
            self._file.flush()
            self._lines += 1
            if self._lines >= 2 * self.max_entries:
                self._compact()
        except OSError as e:
            # The in-memory journal still dedupes for this run; say loudly that a restart
            # would forget.
            log.error("cannot write the command journal {path}: {error}",
                      path=str(self.path), error=str(e))

    def _compact(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for entry in self._entries.values():
                f.write(json.dumps(entry.to_json(), separators=(",", ":")) + "\n")
        os.replace(tmp, self.path)
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._lines = len(self._entries)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
