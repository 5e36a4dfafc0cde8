"""A real listening control-plane web root (REST API, static UI, ops routes) on 127.0.0.1."""

from __future__ import annotations

from twisted.internet import reactor

from streamspace.api.app import Api
from streamspace.context import AppContext
from streamspace.metrics_endpoint import MetricsAccess
from streamspace.static import build_static_resource
from streamspace.web import ControlPlaneWeb, make_site

SECRET = "test-secret-" + "x" * 40


class ReadyDatabase:
    """Stands in for DatabaseService.readiness (the API itself uses the real `db`)."""

    async def readiness(self):
        return True, "ok"


def listen_site(db, state_dir, access: MetricsAccess | None = None):
    """(base URL, listening port) of the whole web root over `db`."""
    ctx = AppContext(reactor=reactor, db=db, jwt_secret=SECRET, public_url="http://localhost",
                     state_dir=state_dir)
    api = Api(ctx)
    web = ControlPlaneWeb(ReadyDatabase(), api=api.app.resource(),
                          static=build_static_resource(),
                          metrics_access=access or MetricsAccess(dev=True))
    port = reactor.listenTCP(0, make_site(web, Api.app.url_map), interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}", port
