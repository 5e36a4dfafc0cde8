"""A private PostgreSQL cluster for the embedded (single-machine) default.

Started from the machine's PostgreSQL binaries in the state directory with a generated
password (scram); as root the server runs as the `postgres` user because initdb refuses
root. Everything goes through `reactor.spawnProcess`, so starting and stopping never
block the reactor.

It listens only on a Unix socket in a 0700 directory of its own (`<cluster>/socket`), no
TCP: on a machine whose sessions share the network, a session cannot bind the address
first (e.g. while the server restarts) and pose as the database. Clients also insist on
`require_auth=scram-sha-256`, so even a server met over TCP (`tcp=True`, which the test
suite's shared cluster uses for its containers) must prove it knows the password: a
stand-in that answers "authentication OK" is refused.

The server runs in its own session (a terminal's Ctrl-C does not reach it: we stop it,
last) and gets SIGINT, a fast shutdown, if the control plane dies. It is supervised: if it
exits on its own, or a restart fails for whatever reason, it is started again at the same
address with backoff, and the pool's connections reconnect by themselves.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import tempfile
from pathlib import Path

from twisted.internet import error
from twisted.internet.task import deferLater
from twisted.logger import Logger

from streamspace.db.pool import make_dsn
from streamspace.processes import (
    SupervisedProcess,
    Supervisor,
    detached,
    process_alive,
    stop_child,
    stop_stray,
)
from streamspace_common import procfs

log = Logger()

DB_NAME = "streamspace"
DB_USER = "streamspace"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
START_ATTEMPTS = 3  # a start that fails (e.g. shared memory of a dead server still held)
SOCKET_PORT = 5432  # names the socket file; the directory is private, so no clash
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
REQUIRE_AUTH = "scram-sha-256"  # libpq refuses a server that skips the password proof


class EmbeddedDatabaseError(Exception):
    """The embedded cluster could not be set up or started; the message says why."""


def find_bindir() -> Path:
    """The newest `/usr/lib/postgresql/*/bin` with initdb, else the PATH's initdb."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise EmbeddedDatabaseError(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb); "
        "install them with `apt-get install postgresql` or configure DB_HOST/DATABASE_URL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether a process running as uid/gid can reach `path` (every ancestor searchable)."""
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def _server_process() -> SupervisedProcess:
    return SupervisedProcess(lambda line: log.debug("postgres: {line}", line=line))


class EmbeddedPostgres:
    """One private cluster under `<state_dir>/postgres` (or a root-safe fallback path).

    `tcp=True` listens on a free 127.0.0.1 port instead of the private socket (for
    clients that cannot reach the socket, e.g. containers of the test suite)."""

    def __init__(self, state_dir: Path, reactor, extra_settings: dict[str, str] | None = None,
                 *, supervise: bool = True, tcp: bool = False):
        self.reactor = reactor
        self.supervise = supervise
        self.tcp = tcp
        self.state_dir = Path(state_dir).resolve()
        self.extra_settings = extra_settings or {}
        self.port: int | None = None
        self._proto: SupervisedProcess | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise EmbeddedDatabaseError(
                    "running as root needs the `postgres` system user to run PostgreSQL "
                    "(apt-get install postgresql creates it)") from None
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
        else:
            self._uid, self._gid = os.getuid(), os.getgid()
        self.base = self._choose_base()
        self.data_dir = self.base / "data"
        self.socket_dir = self._choose_socket_dir()
        self.password_file = self.state_dir / "postgres.password"
        self._stopping = False
        self._bindir: Path | None = None
        self._supervisor = Supervisor(reactor, "embedded PostgreSQL", self._restart,
                                      expected=(EmbeddedDatabaseError,))

    def _choose_base(self) -> Path:
        base = self.state_dir / "postgres"
        if self._as_root and not _traversable_by(self.state_dir, self._uid, self._gid):
            # The state directory sits under a path `postgres` cannot enter (e.g. /root);
            # keep the cluster in a root-owned, postgres-traversable place instead.
            import hashlib

            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
            fallback = Path("/var/tmp") / f"streamspace-pg-{digest}"
            log.info("state directory {d} is not reachable by the postgres user; "
                     "keeping the embedded cluster in {f}", d=self.state_dir, f=fallback)
            return fallback
        return base

    def _choose_socket_dir(self) -> Path:
        """`<cluster>/socket`; if the socket's path would not fit in a sockaddr_un, a
        directory named after the cluster in the temporary directory (checked to be
        ours when it exists: see `_private_dir`)."""
        inside = self.base / "socket"
        if len(str(inside / f".s.PGSQL.{SOCKET_PORT}")) <= MAX_SOCKET_PATH:
            return inside
        import hashlib

        digest = hashlib.sha256(str(self.base).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"streamspace-pg-{digest}"

    @property
    def restarts(self) -> int:
        """How many times supervision brought the server back."""
        return self._supervisor.restarts

    @property
    def address(self) -> str:
        """Where it listens, for logs: the socket directory or 127.0.0.1:port."""
        return f"127.0.0.1:{self.port}" if self.tcp else f"{self.socket_dir} (Unix socket)"

    @property
    def dsn(self) -> str:
        return self.dsn_for(DB_NAME)

    def dsn_for(self, dbname: str) -> str:
        host = "127.0.0.1" if self.tcp else str(self.socket_dir)
        return make_dsn(host=host, port=self.port, dbname=dbname, user=DB_USER,
                        password=self._password(), require_auth=REQUIRE_AUTH,
                        connect_timeout=5)

    def _password(self) -> str:
        if not self.password_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return self.password_file.read_text().strip()

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o700)
        if self._as_root:
            os.chown(self.base, self._uid, self._gid)
        if not self.tcp:
            self._private_dir(self.socket_dir)

    def _private_dir(self, path: Path) -> None:
        """A directory only the server's user may enter (and so create sockets in)."""
        try:
            path.mkdir(mode=0o700)
            if self._as_root:
                os.chown(path, self._uid, self._gid)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != self._uid:
            raise EmbeddedDatabaseError(
                f"{path} is not a directory of the PostgreSQL server's user; it cannot hold "
                "the embedded database's socket (remove it)")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)

    def _spawn(self, proto, argv: list[str], death_signal: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
               "HOME": str(self.base)}
        kwargs = {}
        if self._as_root:
            kwargs = {"uid": self._uid, "gid": self._gid}
        argv = detached(argv, death_signal)
        self.reactor.spawnProcess(proto, argv[0], argv, env=env, path=str(self.base), **kwargs)

    async def _run(self, argv: list[str]) -> None:
        proto = _server_process()
        self._spawn(proto, argv, "TERM")  # initdb removes its half-made cluster on TERM
        reason = await proto.ended
        if not isinstance(reason, error.ProcessDone):
            out = "\n".join(proto.lines)
            raise EmbeddedDatabaseError(f"{Path(argv[0]).name} failed: {out}")

    async def _initdb(self, bindir: Path) -> None:
        log.info("creating embedded PostgreSQL cluster in {dir}", dir=self.data_dir)
        pwfile = self.base / "initdb.pw"
        pwfile.write_text(self._password() + "\n")
        os.chmod(pwfile, 0o600)
        if self._as_root:
            os.chown(pwfile, self._uid, self._gid)
        try:
            await self._run([
                str(bindir / "initdb"), "-D", str(self.data_dir), "-U", DB_USER,
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale",
                "--no-sync",
            ])
        finally:
            pwfile.unlink(missing_ok=True)

    async def _stop_stale(self) -> None:
        """A previous run killed hard may have left its postmaster running on our data dir."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        if not process_alive(pid) or str(self.data_dir) not in procfs.cmdline(pid):
            return  # a stale pid file: postgres removes it itself
        await stop_stray(self.reactor, pid, "embedded PostgreSQL", signal.SIGINT, STOP_TIMEOUT)

    async def start(self) -> str:
        """Initialise if needed, start, wait until it accepts connections; returns the DSN."""
        bindir = find_bindir()
        self._prepare_dirs()
        self._stopping = False
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb(bindir)
        if self.port is None:
            self.port = free_port() if self.tcp else SOCKET_PORT
        self._bindir = bindir
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self._start_server()
                break
            except EmbeddedDatabaseError as e:
                if attempt == START_ATTEMPTS or self._stopping:
                    raise
                delay = self._supervisor.backoff.delay()
                log.warn("embedded PostgreSQL did not start ({reason}); retrying in "
                         "{delay:.0f}s", reason=str(e).splitlines()[0], delay=delay)
                await deferLater(self.reactor, delay, lambda: None)
        await self._ensure_database()
        if self.supervise and not self._stopping:
            self._supervisor.watch(self._proto)
        log.info("embedded PostgreSQL ready on {address}", address=self.address)
        return self.dsn

    def _settings(self) -> dict[str, str]:
        if self.tcp:
            listen = {"listen_addresses": "127.0.0.1", "unix_socket_directories": ""}
        else:
            listen = {"listen_addresses": "", "unix_socket_directories": str(self.socket_dir),
                      "unix_socket_permissions": "0700"}
        return {**listen, "port": str(self.port), "max_connections": "100",
                **self.extra_settings}

    async def _start_server(self) -> SupervisedProcess:
        await self._stop_stale()
        argv = [str(self._bindir / "postgres"), "-D", str(self.data_dir)]
        for k, v in self._settings().items():
            argv += ["-c", f"{k}={v}"]
        proto = _server_process()
        self._proto = proto
        self._spawn(proto, argv, "INT")  # if we die: a fast shutdown, not an orphan
        await self._wait_ready(proto)
        return proto

    async def _restart(self) -> SupervisedProcess:
        """Supervision's launch: the server again, at the same address."""
        self._proto = None
        proto = await self._start_server()
        log.info("embedded PostgreSQL serving again on {address}", address=self.address)
        return proto

    async def _wait_ready(self, proto: SupervisedProcess) -> None:
        import psycopg2

        deadline = self.reactor.seconds() + START_TIMEOUT
        dsn = self.dsn_for("postgres")
        while True:
            if proto.ended.called:
                raise EmbeddedDatabaseError(
                    "embedded PostgreSQL exited during start-up:\n" + "\n".join(proto.lines))
            try:
                conn = await _connect(self.reactor, dsn)
                conn.close()
                return
            except psycopg2.OperationalError:
                pass
            if self.reactor.seconds() > deadline:
                raise EmbeddedDatabaseError(
                    f"embedded PostgreSQL did not accept connections within {START_TIMEOUT:.0f}s:\n"
                    + "\n".join(proto.lines))
            await deferLater(self.reactor, 0.1, lambda: None)

    async def _ensure_database(self) -> None:
        conn = await _connect(self.reactor, self.dsn_for("postgres"))
        try:
            rows = await conn.runQuery("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if not rows:
                await conn.runOperation(f"CREATE DATABASE {DB_NAME}")
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        return self._proto is not None and not self._proto.ended.called

    async def stop(self) -> None:
        """Fast shutdown (SIGINT), escalating to SIGKILL if it does not exit in time."""
        self._stopping = True
        self._supervisor.halt()
        proto, self._proto = self._proto, None
        if proto is None or proto.ended.called:
            return
        await stop_child(self.reactor, proto, "embedded PostgreSQL", signal.SIGINT,
                         STOP_TIMEOUT)
        log.info("embedded PostgreSQL stopped")


async def _connect(reactor, dsn: str):
    from txpostgres import txpostgres

    conn = txpostgres.Connection(reactor=reactor)
    try:
        await conn.connect(dsn)
    except Exception:
        # txpostgres leaves a failed connection watched by the reactor, which polls it
        # again and logs its error as unhandled (e.g. "the database system is starting
        # up" while we wait for the server): stop watching it (if it got that far).
        if conn._connection is not None:
            conn.close()
        raise
    return conn
