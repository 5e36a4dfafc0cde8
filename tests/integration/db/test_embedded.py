"""The embedded PostgreSQL cannot be impersonated, and its supervision never gives up.

A session on the machine shares its network: over TCP it could bind the database's port
while the server restarts and answer "authentication OK" to everyone. So the embedded
cluster listens on a Unix socket in a directory only the server's user may enter, and
every DSN it hands out insists on a SCRAM exchange (a stand-in without the password
cannot finish one). Supervision restarts the server whatever went wrong on the way.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import struct
import tempfile
from pathlib import Path

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.logger import globalLogPublisher

from streamspace.db import embedded
from streamspace.db.embedded import EmbeddedDatabaseError, EmbeddedPostgres, _connect
from tests.conftest import run
from tests.support.polling import sleep, until


@pytest.fixture
def base():
    path = Path(tempfile.mkdtemp(prefix="streamspace-test-emb-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(base):
    pg = EmbeddedPostgres(base, reactor, extra_settings={"fsync": "off"})
    yield pg
    run(pg.stop())


async def _show(pg: EmbeddedPostgres, setting: str) -> str:
    conn = await _connect(reactor, pg.dsn_for("postgres"))
    try:
        [(value,)] = await conn.runQuery(f"SHOW {setting}")
        return value
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_listens_only_on_a_socket_in_a_directory_of_its_own(cluster):
    dsn = await cluster.start()
    assert f"host='{cluster.socket_dir}'" in dsn and "require_auth='scram-sha-256'" in dsn
    assert await _show(cluster, "listen_addresses") == ""  # no TCP at all
    assert await _show(cluster, "unix_socket_directories") == str(cluster.socket_dir)
    st = os.lstat(cluster.socket_dir)
    server_uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.getuid()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == server_uid
    assert any(p.is_socket() for p in cluster.socket_dir.iterdir())


def test_a_socket_path_too_long_for_sockaddr_un_moves_to_the_temporary_directory(base):
    deep = base / ("d" * 60) / ("e" * 60)
    pg = EmbeddedPostgres(deep, reactor)
    assert pg.socket_dir.parent == Path(tempfile.gettempdir())
    assert len(str(pg.socket_dir / ".s.PGSQL.5432")) <= embedded.MAX_SOCKET_PATH
    short = EmbeddedPostgres(base, reactor)
    assert short.socket_dir == short.base / "socket"


def test_a_socket_directory_someone_else_made_is_refused(base):
    """The fallback's name is predictable: whoever made it first must not get our
    socket (nor a symlink to elsewhere)."""
    pg = EmbeddedPostgres(base, reactor)
    pg.socket_dir = base / "planted"
    os.symlink(base, pg.socket_dir)
    with pytest.raises(EmbeddedDatabaseError, match="planted is not a directory"):
        pg._prepare_dirs()
    os.unlink(pg.socket_dir)
    pg.socket_dir.mkdir(mode=0o777)
    os.chown(pg.socket_dir, 65534, 65534)  # nobody's (the suite runs as root)
    with pytest.raises(EmbeddedDatabaseError, match="planted is not a directory"):
        pg._prepare_dirs()


class _Impostor(protocol.Protocol):
    """What a process that grabbed the port would answer: no SSL, then "authentication
    OK" without asking for any password, a few parameters and "ready for query"."""

    def __init__(self, seen: list) -> None:
        self.seen = seen
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 8:
            length, code = struct.unpack("!ii", self.buffer[:8])
            if len(self.buffer) < length:
                return
            self.buffer = self.buffer[length:]
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                self.transport.write(b"N")
                continue
            self.seen.append("startup")
            out = struct.pack("!cii", b"R", 8, 0)  # AuthenticationOk
            for key, value in (("server_version", "15.0"), ("client_encoding", "UTF8"),
                               ("DateStyle", "ISO, MDY"),
                               ("standard_conforming_strings", "on"),
                               ("integer_datetimes", "on")):
                body = key.encode() + b"\0" + value.encode() + b"\0"
                out += b"S" + struct.pack("!i", len(body) + 4) + body
            out += b"Z" + struct.pack("!i", 5) + b"I"
            self.transport.write(out)
            return


class _StartingUp(protocol.Protocol):
    """Answers as a postmaster still starting up does: FATAL 57P03, then closes."""

    def dataReceived(self, data: bytes) -> None:
        fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
        self.transport.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_attempt_leaves_nothing_behind(base):
    """While the server starts, attempts fail ("the database system is starting up");
    txpostgres watched each failed connection again, the reactor polled it and logged an
    "Unhandled Error" (a traceback in the control plane's log at about every other
    start). The stand-in answers as the real server does in that state."""
    pg = EmbeddedPostgres(base, reactor)
    pg.port = embedded.SOCKET_PORT
    pg.socket_dir.mkdir(parents=True)
    port = reactor.listenUNIX(str(pg.socket_dir / f".s.PGSQL.{pg.port}"),
                              protocol.Factory.forProtocol(_StartingUp))
    failures: list = []

    def observe(event):
        failure = event.get("log_failure") or event.get("failure")  # new or legacy API
        if failure is not None:
            failures.append(failure)

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(3):
            with pytest.raises(psycopg2.OperationalError, match="starting up"):
                await _connect(reactor, pg.dsn)
        await sleep(0.3)  # time for the reactor to poll anything left watched
    finally:
        globalLogPublisher.removeObserver(observe)
        await port.stopListening()
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_a_stand_in_answering_authentication_ok_is_refused(base):
    """With TCP (as the test suite's shared cluster uses), a process bound to the port
    first cannot pose as the database: the DSN demands SCRAM, which needs the password."""
    seen: list[str] = []
    factory = protocol.Factory.forProtocol(lambda: _Impostor(seen))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        pg = EmbeddedPostgres(base, reactor, tcp=True)
        pg.port = port.getHost().port
        with pytest.raises(psycopg2.OperationalError, match="scram-sha-256"):
            await _connect(reactor, pg.dsn)
        assert seen == ["startup"]  # it really reached the stand-in
        # The stand-in is convincing: a client that does not insist is fooled by it.
        fooled = await _connect(reactor, pg.dsn.replace("require_auth='scram-sha-256'", ""))
        fooled.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_supervision_survives_an_unexpected_error_while_restarting(cluster):
    """Should-fix 7: a restart that fails with something else than EmbeddedDatabaseError
    (here an OSError from spawning) is logged and retried, not the end of supervision."""
    await cluster.start()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    real_spawn, failures = cluster._spawn, []

    def spawn_failing_once(*args):
        if not failures:
            failures.append(True)
            raise OSError(24, "Too many open files")
        return real_spawn(*args)

    cluster._spawn = spawn_failing_once
    try:
        first = cluster._proto.transport.pid
        os.kill(first, signal.SIGKILL)
        await until(lambda: cluster.restarts == 1, timeout=30,
                    what="the embedded PostgreSQL to be restarted after the failed attempt")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert failures == [True]
    assert await _show(cluster, "listen_addresses") == ""
    assert cluster._proto.transport.pid != first
    failed = [e for e in events if e.get("log_failure") is not None
              and "could not be started" in e.get("log_format", "")]
    assert failed and isinstance(failed[0]["log_failure"].value, OSError)
