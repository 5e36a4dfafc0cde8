"""`twistd streamspace`: wires the control plane's service tree (no logic lives here)."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from twisted.application import service
from twisted.logger import Logger

from streamspace import metrics
from streamspace.bootstrap import initial_admin_hook
from streamspace.config import (
    ServerOptions,
    covers_loopback,
    is_dev,
    listen_interface,
    local_url,
    public_url,
    uses_embedded_database,
    uses_tls,
)
from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.pool import dsn_from_options
from streamspace.db.service import DatabaseService
from streamspace.listeners import ListeningService, UnixListeningService
from streamspace.secrets_store import read_or_create
from streamspace.service_tree import OrderedMultiService, StopSignals
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

    from streamspace.agents.service import Readiness, build_fleet
    from streamspace.api import vnc as vnc_api
    from streamspace.api.app import build_api
    from streamspace.api.catalog import catalog_hook, load_catalog
    from streamspace.context import AppContext
    from streamspace.local_agent import LOCAL_AGENT_ID, LocalAgentService
    from streamspace.metrics_endpoint import MetricsAccess, metrics_site
    from streamspace.metrics_refresh import FleetRefresher
    from streamspace.relay.proxy import VncProxy
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
    reactor.callWhenRunning(StopSignals(reactor).install)

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
    FleetRefresher(reactor, database).setServiceParent(root)
    metrics.watch_pool(database.db.pool_usage)
    tls = _tls_options(options)
    ctx.extras[vnc_api.EXTRA] = proxy

    if options["local_agent"]:
        if not is_dev(options):
            log.warn("--local-agent is a dev-mode feature; ignored with an external database "
                     "(pass --dev to force it)")
        else:
            # Over TLS the local agent trusts CONTROL_PLANE_CA_FILE, else our certificate
            # itself (a self-signed one for 127.0.0.1, as dev mode would use).
            ca_file = os.environ.get("CONTROL_PLANE_CA_FILE") or options["tls_cert"]
            LocalAgentService(reactor, database, state_dir, local_url(options),
                              ca_file=ca_file if tls is not None else None
                              ).setServiceParent(root)

    api_resource, api_map = build_api(ctx)
    web_root = ControlPlaneWeb(
        Readiness(database, fleet.service), api=api_resource,
        websockets={**fleet.websockets(),
                    "vnc": vnc_api.viewer_endpoint(proxy, ctx.public_url, ctx.trusted_proxies),
                    "agent_tunnel": vnc_api.tunnel_endpoint(proxy)},
        static=build_static_resource(),
        metrics_access=MetricsAccess.from_options(options, dev=is_dev(options)))
    site = make_site(web_root, api_map)
    interface = listen_interface(options)
    web = ListeningService(reactor, options["port"], site, interface, tls=tls)
    web.setServiceParent(root)
    listeners: list = [web]
    if options["listen_unix"]:
        proxy_socket = UnixListeningService(reactor, options["listen_unix"], site,
                                            options["listen_unix_group"])
        proxy_socket.setServiceParent(root)
        listeners.append(proxy_socket)
    if any(covers_loopback(n) for n in options["trusted_proxies"]):
        log.warn("TRUSTED_PROXIES includes loopback: every process on this machine (local "
                 "sessions too) can then name its own client address in X-Forwarded-For; "
                 "prefer LISTEN_UNIX for a reverse proxy on this machine")
    if options["metrics_address"] is not None:
        host, port = options["metrics_address"]
        metrics_web = ListeningService(
            reactor, port, metrics_site(MetricsAccess.from_options(options, is_dev(options))),
            host or interface, tls=tls, name="metrics-web")
        metrics_web.setServiceParent(root)
        listeners.append(metrics_web)
    reactor.callWhenRunning(_banner, listeners, public_url(options), state_dir)
    if options["local_agent"] and is_dev(options):
        # the URL is worth opening once a session can start: when the local agent is in
        fleet.hub.when_registered(LOCAL_AGENT_ID).addCallback(
            lambda _: log.info("StreamSpace is ready (local agent online): open {url}",
                               url=web.url()))
    return root


def _tls_options(options):
    if not uses_tls(options):
        return None
    from streamspace.tls import TLSConfigError, server_options

    try:
        return server_options(options["tls_cert"], options["tls_key"])
    except TLSConfigError as e:
        raise SystemExit(f"streamspace: {e}") from None


def _banner(listeners: list, public: str, state_dir: Path) -> None:
    """Say where we really listen (not where we hope users find us), and where our state
    is (`make run` prints nothing of its own)."""
    web, *others = listeners
    if web.listening is None:
        return
    log.info("StreamSpace control plane listening on {url} (public URL {public}); state "
             "directory {state}; stop with Ctrl-C or SIGTERM", url=web.url(), public=public,
             state=str(state_dir))
    host = web.listening.getHost().host
    if web.tls is None and not ipaddress.ip_address(host).is_loopback:
        log.warn("serving plain HTTP on {host}: logins and agent tokens cross the network "
                 "in clear unless a TLS reverse proxy is in front (or set --tls-cert)",
                 host=host)
    for extra in others:
        if extra.listening is None:
            continue
        if isinstance(extra, UnixListeningService):
            log.info("also listening on {url} (for a reverse proxy on this machine)",
                     url=extra.url())
        else:
            log.info("metrics served on {url}/metrics", url=extra.url())
