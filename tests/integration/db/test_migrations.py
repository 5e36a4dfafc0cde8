"""Migrations against a real PostgreSQL: from empty, re-run, refusals, concurrent migrators."""

import subprocess
import sys
import textwrap

import pytest_twisted
from twisted.internet import defer, reactor

from streamspace.db import migrations
from streamspace.db.migrations import Migration, MigrationError
from streamspace.db.pool import Database

EXPECTED_TABLES = {"users", "templates", "agents", "agent_commands", "sessions",
                   "session_events", "revoked_tokens", "audit_log", "schema_migrations"}


ALL = [m.version for m in migrations.load_migrations()]  # every migration of the repository
NEXT = len(ALL) + 1


async def tables(db):
    rows = await db.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


@pytest_twisted.ensureDeferred
async def test_migrate_from_empty_then_idempotent(empty_db):
    state = await migrations.status(empty_db)
    assert not state.current and [m.version for m in state.pending] == ALL
    assert await migrations.migrate(empty_db) == ALL
    assert EXPECTED_TABLES <= await tables(empty_db)
    # the seed's indexes exist
    rows = await empty_db.query("SELECT indexname FROM pg_indexes WHERE schemaname='public'")
    names = {r[0] for r in rows}
    for idx in ("idx_agents_agent_id", "idx_agents_platform", "idx_agents_status",
                "idx_agents_last_heartbeat", "idx_agent_commands_agent_id",
                "idx_agent_commands_session_id", "idx_agent_commands_status",
                "idx_sessions_agent_id", "idx_sessions_platform"):
        assert idx in names
    assert await migrations.migrate(empty_db) == []
    assert (await migrations.status(empty_db)).current


@pytest_twisted.ensureDeferred
async def test_pending_migration_is_reported(db):
    extra = migrations.load_migrations() + [Migration(NEXT, "next",
                                                      "CREATE TABLE next_t (x int);")]
    state = await migrations.status(db, extra)
    assert [m.version for m in state.pending] == [NEXT]
    assert f"pending migrations {NEXT:04d}" in state.problem()
    assert await migrations.migrate(db, extra) == [NEXT]
    assert "next_t" in await tables(db)


@pytest_twisted.ensureDeferred
async def test_unknown_migration_in_database_is_refused(db):
    await db.execute("INSERT INTO schema_migrations (version, name, checksum) "
                     "VALUES (99, 'from_the_future', 'x')")
    state = await migrations.status(db)
    assert state.unknown == [99]
    assert "newer StreamSpace" in state.problem()
    try:
        await migrations.migrate(db)
    except MigrationError as e:
        assert "0099" in str(e)
    else:
        raise AssertionError("migrate() accepted a database from a newer version")


@pytest_twisted.ensureDeferred
async def test_edited_migration_is_refused(db):
    edited = [Migration(1, "initial", "-- edited after release\n")] + \
        migrations.load_migrations()[1:]
    state = await migrations.status(db, edited)
    assert state.modified == [1]
    assert "edited after release" in state.problem()


@pytest_twisted.ensureDeferred
async def test_failed_migration_rolls_back_everything(empty_db):
    broken = migrations.load_migrations() + [Migration(NEXT, "broken", "CREATE TABLE oops (;")]
    try:
        await migrations.migrate(empty_db, broken)
    except Exception:
        pass
    else:
        raise AssertionError("a broken migration was applied")
    # nothing half-applied: not even 0001, which shared the transaction
    assert "users" not in await tables(empty_db)


@pytest_twisted.ensureDeferred
async def test_two_connections_migrating_at_once_apply_once(empty_dsn):
    a, b = Database(empty_dsn, 1, reactor), Database(empty_dsn, 1, reactor)
    await a.start()
    await b.start()
    try:
        results = await defer.gatherResults([
            defer.Deferred.fromCoroutine(migrations.migrate(a)),
            defer.Deferred.fromCoroutine(migrations.migrate(b)),
        ])
        assert sorted(results, key=len) == [[], ALL]
        rows = await a.query("SELECT count(*) FROM schema_migrations")
        assert rows[0][0] == len(ALL)
    finally:
        a.close()
        b.close()


MIGRATE_PROCESS = textwrap.dedent("""
    import sys
    from twisted.internet import defer, task
    from streamspace.db import migrations
    from streamspace.db.pool import Database

    async def main(reactor):
        db = Database(sys.argv[1], 1, reactor)
        await db.start()
        applied = await migrations.migrate(db)
        db.close()
        print("APPLIED", applied)

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))
""")


def test_two_processes_migrating_at_once_apply_once(empty_dsn):
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE_PROCESS, empty_dsn],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outputs.append(out.strip())
    assert sorted(outputs) == sorted(["APPLIED []", f"APPLIED {ALL}"])
