"""`twistd streamspace`: wires the control plane's service tree (no logic lives here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from streamspace import logs
from streamspace.accel import check_websocket_acceleration
from streamspace.bootstrap import initial_admin_hook
from streamspace.config import ServerOptions, is_dev, uses_embedded_database
from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.pool import dsn_from_options
from streamspace.db.service import DatabaseService
from streamspace.secrets_store import read_or_create

log = Logger()

Options = ServerOptions


def fatal_exit(reactor, reason: str, code: int = 1) -> None:
    """Stop everything cleanly (embedded database included), then exit non-zero.

    twistd has no exit-status API, so the process exits from an after-shutdown trigger,
    once every service has stopped.
    """

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", leave)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


class ListeningService(service.Service):
    """Listens on the HTTP port; a port already in use is a one-line fatal error."""

    name = "web"

    def __init__(self, reactor, port: int, factory, interface: str) -> None:
        self.reactor, self.port, self.factory, self.interface = reactor, port, factory, interface
        self.listening = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.listening = self.reactor.listenTCP(
                self.port, self.factory, interface=self.interface)
        except CannotListenError as e:
            raise SystemExit(f"streamspace: cannot listen on {self.interface}:{self.port}: "
                             f"{e.socketError.strerror if e.socketError else e}") from None

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None


def resolve_jwt_secret(options, state_dir: Path) -> str:
    if options["jwt_secret"] and len(options["jwt_secret"]) >= 32:
        return options["jwt_secret"]
    if options["jwt_secret"]:
        log.warn("JWT_SECRET is shorter than 32 characters; accepted only in dev mode")
        return options["jwt_secret"]
    secret, created = read_or_create(state_dir / "jwt-secret")
    if created:
        log.info("generated a JWT secret in {path}", path=str(state_dir / "jwt-secret"))
    return secret


def makeService(options) -> service.IService:
    from twisted.internet import reactor

    from streamspace.web import ControlPlaneWeb, make_site

    logs.set_level(options["log_level"])
    check_websocket_acceleration()

    state_dir = Path(options["state_dir"]).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # 0711: others may traverse (the embedded cluster runs as `postgres` when we are
    # root) but not list; every file here is created 0600.
    os.chmod(state_dir, 0o711)
    root = service.MultiService()

    embedded = EmbeddedPostgres(state_dir, reactor) if uses_embedded_database(options) else None
    migrate = bool(options["migrate"] or options["migrate_only"] or is_dev(options))
    database = DatabaseService(
        reactor,
        None if embedded else dsn_from_options(options),
        options["db_pool_size"],
        migrate=migrate,
        embedded=embedded,
        on_fatal=lambda reason: fatal_exit(reactor, reason),
    )
    database.setServiceParent(root)

    if options["migrate_only"]:
        def done(_):
            log.info("migrations are current; exiting (--migrate-only)")
            reactor.stop()

        database.ready.addCallback(done)
        return root

    options["jwt_secret_resolved"] = resolve_jwt_secret(options, state_dir)
    database.add_startup_hook(initial_admin_hook(reactor, state_dir, options["admin_password"]))

    web_root = ControlPlaneWeb(database)
    site = make_site(web_root)
    web = ListeningService(reactor, options["port"], site, options["interface"])
    web.setServiceParent(root)

    url = f"http://localhost:{options['port']}"
    reactor.callWhenRunning(
        log.info, "StreamSpace control plane listening on {url}", url=url)
    return root
