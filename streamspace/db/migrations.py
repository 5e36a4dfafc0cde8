"""Numbered SQL migrations (`schema/NNNN_name.sql`), applied under an advisory lock.

Rules: migrations apply in order, each recorded in `schema_migrations` with a checksum;
a released migration is never edited (a changed checksum is refused); a database that
has migrations this code does not know is refused (it is newer than the code).
Everything pending is applied in one transaction holding a transaction-level advisory
lock, so two processes migrating at once serialise and only one applies.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from twisted.logger import Logger

from streamspace.db.pool import Database, fetch_all

log = Logger()

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schema"
LOCK_KEY = 0x53545245  # "STRE": the migration advisory lock, shared by every process
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The schema and the code disagree in a way a human must resolve."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class MigrationStatus:
    applied: list[int] = field(default_factory=list)
    pending: list[Migration] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    modified: list[int] = field(default_factory=list)

    @property
    def current(self) -> bool:
        return not (self.pending or self.unknown or self.modified)

    def problem(self) -> str | None:
        """A sentence an operator can act on, or None when the schema is current."""
        if self.unknown:
            return (f"database has migrations this version does not know: "
                    f"{_versions(self.unknown)} (it was migrated by a newer StreamSpace)")
        if self.modified:
            return (f"applied migrations were edited after release: {_versions(self.modified)} "
                    f"(add a new migration instead)")
        if self.pending:
            return (f"database schema is behind: pending migrations "
                    f"{_versions([m.version for m in self.pending])}; run with --migrate")
        return None


def _versions(vs: list[int]) -> str:
    return ", ".join(f"{v:04d}" for v in vs)


def load_migrations(directory: Path = SCHEMA_DIR) -> list[Migration]:
    """Read `NNNN_name.sql` files in version order; refuses gaps, duplicates and bad names."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}")
        found[version] = Migration(version, m.group(2), path.read_text())
    ordered = [found[v] for v in sorted(found)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing from {directory}")
    return ordered


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def _applied(cursor) -> dict[int, str]:
    rows = await fetch_all(cursor, "SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not rows[0][0]:
        return {}
    rows = await fetch_all(cursor, "SELECT version, checksum FROM schema_migrations")
    return {v: c for v, c in rows}


def _compare(applied: dict[int, str], migrations: list[Migration]) -> MigrationStatus:
    known = {m.version: m for m in migrations}
    return MigrationStatus(
        applied=sorted(applied),
        pending=[m for m in migrations if m.version not in applied],
        unknown=sorted(v for v in applied if v not in known),
        modified=sorted(v for v, c in applied.items() if v in known and known[v].checksum != c),
    )


async def status(db: Database, migrations: list[Migration] | None = None) -> MigrationStatus:
    migrations = load_migrations() if migrations is None else migrations

    async def read(cursor):
        return _compare(await _applied(cursor), migrations)

    return await db.transaction(read)


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply every pending migration; returns the versions this call applied."""
    migrations = load_migrations() if migrations is None else migrations

    async def apply(cursor) -> list[int]:
        await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await cursor.execute(_CREATE_TABLE)
        state = _compare(await _applied(cursor), migrations)
        if state.unknown or state.modified:
            raise MigrationError(state.problem())
        done = []
        for m in state.pending:
            log.info("applying migration {version:04d}_{name}", version=m.version, name=m.name)
            await cursor.execute(m.sql)
            await cursor.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum))
            done.append(m.version)
        return done

    return await db.transaction(apply)
