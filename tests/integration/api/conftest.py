"""REST API fixtures: a real control plane web root on 127.0.0.1, port 0, over a fresh
migrated database; argon2 made cheap for speed (tests only)."""

from __future__ import annotations

import pytest
import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet import reactor

from streamspace.api.app import Api
from streamspace.auth import passwords
from streamspace.context import AppContext
from streamspace.web import ControlPlaneWeb, make_site
from tests.integration.api.support import SECRET, Client

passwords.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


class _ReadyDatabase:
    async def readiness(self):
        return True, "ok"


@pytest.fixture
def ctx(db, tmp_path):
    return AppContext(reactor=reactor, db=db, jwt_secret=SECRET,
                      public_url="http://localhost", state_dir=tmp_path,
                      default_max_sessions=3)


@pytest.fixture
def server(ctx):
    """A client of a listening site with the API mounted at /api/v1/ (`client.api` is
    the Api instance)."""
    api = Api(ctx)  # what build_api(ctx) does, keeping the instance for tests
    web = ControlPlaneWeb(_ReadyDatabase(), api=api.app.resource())
    port = reactor.listenTCP(0, make_site(web, Api.app.url_map), interface="127.0.0.1")
    client = Client(f"http://127.0.0.1:{port.getHost().port}")
    client.api = api
    yield client
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def client(server):
    return server
