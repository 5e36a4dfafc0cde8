"""`twistd streamspace`: wires the control plane's service tree (no logic lives here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from streamspace.bootstrap import initial_admin_hook
from streamspace.config import ServerOptions, is_dev, public_url, uses_embedded_database
from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.pool import dsn_from_options
from streamspace.db.service import DatabaseService
from streamspace.secrets_store import read_or_create
from streamspace.service_tree import OrderedMultiService
from streamspace_common import logs
from streamspace_common.accel import check_websocket_acceleration

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
    """Listens on the HTTP port; a port already in use is a one-line fatal error.

    The accept queue is deep (Twisted's default is 50): a burst of viewers, each bringing
    its agent's tunnel leg, must not overflow it into SYN retries and handshake timeouts.
    """

    BACKLOG = 1024

    name = "web"

    def __init__(self, reactor, port: int, factory, interface: str) -> None:
        self.reactor, self.port, self.factory, self.interface = reactor, port, factory, interface
        self.listening = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.listening = self.reactor.listenTCP(
                self.port, self.factory, backlog=self.BACKLOG, interface=self.interface)
        except CannotListenError as e:
            raise SystemExit(f"streamspace: cannot listen on {self.interface}:{self.port}: "
                             f"{e.socketError.strerror if e.socketError else e}") from None

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            d = defer.maybeDeferred(listening.stopListening)
            close = getattr(self.factory, "close_connections", None)
            if close is not None:
                d.addCallback(lambda _: close())
            return d
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

    from streamspace.agents.service import build_fleet
    from streamspace.api import vnc as vnc_api
    from streamspace.api.app import build_api
    from streamspace.api.catalog import catalog_hook, load_catalog
    from streamspace.context import AppContext
    from streamspace.local_agent import LocalAgentService
    from streamspace.relay.proxy import VncProxy
    from streamspace.sessions.routes import SessionRoutes
    from streamspace.static import build_static_resource
    from streamspace.web import ControlPlaneWeb, make_site

    logs.set_level(options["log_level"])
    check_websocket_acceleration()

    state_dir = Path(options["state_dir"]).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # 0711: others may traverse (the embedded cluster runs as `postgres` when we are
    # root) but not list; every file here is created 0600.
    os.chmod(state_dir, 0o711)
    root = OrderedMultiService()

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

    ctx = AppContext(
        reactor=reactor, db=database.db, jwt_secret=options["jwt_secret_resolved"],
        public_url=public_url(options), state_dir=state_dir,
        token_lifetime=options["token_lifetime"],
        default_max_sessions=options["max_sessions_per_user"],
        command_timeout=options["command_timeout"],
        agent_heartbeat_timeout=options["agent_heartbeat_timeout"],
        vnc_proxy_timeout=options["vnc_proxy_timeout"],
        trusted_proxies=options["trusted_proxies"])
    database.add_startup_hook(catalog_hook(load_catalog()))

    fleet = build_fleet(reactor, database, heartbeat_timeout=options["agent_heartbeat_timeout"],
                        command_timeout=options["command_timeout"])
    fleet.service.setServiceParent(root)
    fleet.lifecycle.idle_timeout = options["session_idle_timeout"]
    ctx.extras["lifecycle"] = fleet.lifecycle
    ctx.extras["agent_hub"] = fleet.hub
    proxy = VncProxy(reactor, database.db, fleet.hub, ctx.jwt_secret,
                     options["vnc_proxy_timeout"],
                     max_viewers_per_session=options["max_viewers_per_session"],
                     max_viewers_per_user=options["max_viewers_per_user"])
    fleet.service.proxy = proxy
    ctx.extras[vnc_api.EXTRA] = proxy

    if options["local_agent"]:
        if not is_dev(options):
            log.warn("--local-agent is a dev-mode feature; ignored with an external database "
                     "(pass --dev to force it)")
        else:
            LocalAgentService(reactor, database, state_dir,
                              f"http://127.0.0.1:{options['port']}").setServiceParent(root)

    api_resource, api_map = build_api(ctx)
    web_root = ControlPlaneWeb(
        database, api=api_resource,
        websockets={**fleet.websockets(),
                    "vnc": vnc_api.viewer_endpoint(proxy, ctx.public_url, ctx.trusted_proxies),
                    "agent_tunnel": vnc_api.tunnel_endpoint(proxy)},
        session_routes=SessionRoutes(ctx, fleet.lifecycle),
        static=build_static_resource())
    site = make_site(web_root, api_map)
    web = ListeningService(reactor, options["port"], site, options["interface"])
    web.setServiceParent(root)

    url = f"http://localhost:{options['port']}"
    reactor.callWhenRunning(
        log.info, "StreamSpace control plane listening on {url}", url=url)
    return root
