"""Shared fixtures: one throwaway PostgreSQL cluster per test run, a fresh database per test.

The cluster is started by the product's own EmbeddedPostgres from the system binaries
(as the `postgres` user when the suite runs as root), so the embedded default is
exercised by every database test too. It listens on a 127.0.0.1 port rather than the
product's private Unix socket (`tcp=True`): the deploy tests' containers (another uid,
their own filesystem) reach it as an external database, over the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from streamspace.db import migrations
from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.pool import Database

TEMPLATE_DB = "streamspace_migrated_template"


def run(coro):
    """Block a synchronous fixture on a coroutine, with the reactor running (pytest-twisted)."""
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


@pytest.fixture(scope="session")
def pg_cluster():
    base = Path(tempfile.mkdtemp(prefix="streamspace-test-pg-"))
    os.chmod(base, 0o755)
    pg = EmbeddedPostgres(base, reactor, tcp=True, extra_settings={
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "max_connections": "300",
    })
    run(pg.start())
    run(_create_database(pg, TEMPLATE_DB))
    template = Database(pg.dsn_for(TEMPLATE_DB), 1, reactor)
    run(template.start())
    run(migrations.migrate(template))
    template.close()
    yield pg
    run(pg.stop())
    shutil.rmtree(base, ignore_errors=True)


async def _admin_execute(pg: EmbeddedPostgres, sql: str) -> None:
    db = Database(pg.dsn_for("postgres"), 1, reactor)
    await db.start()
    try:
        await db.execute(sql)
    finally:
        db.close()


async def _create_database(pg: EmbeddedPostgres, name: str, template: str | None = None) -> None:
    suffix = f" TEMPLATE {template}" if template else ""
    await _admin_execute(pg, f"CREATE DATABASE {name}{suffix}")


def _new_database(pg: EmbeddedPostgres, template: str | None):
    name = f"t_{uuid.uuid4().hex[:12]}"
    run(_create_database(pg, name, template))
    return name


def _drop(pg: EmbeddedPostgres, name: str) -> None:
    run(_admin_execute(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_dsn(pg_cluster):
    """A DSN to a brand-new, empty database (no migrations applied)."""
    name = _new_database(pg_cluster, None)
    yield pg_cluster.dsn_for(name)
    _drop(pg_cluster, name)


@pytest.fixture
def migrated_dsn(pg_cluster):
    """A DSN to a new database with every migration applied (copied from a template)."""
    name = _new_database(pg_cluster, TEMPLATE_DB)
    yield pg_cluster.dsn_for(name)
    _drop(pg_cluster, name)


@pytest.fixture
def empty_db(empty_dsn):
    db = Database(empty_dsn, 2, reactor)
    run(db.start())
    yield db
    db.close()


@pytest.fixture
def db(migrated_dsn):
    """A connected `Database` on a fully migrated, otherwise empty database."""
    database = Database(migrated_dsn, 3, reactor)
    run(database.start())
    yield database
    database.close()
