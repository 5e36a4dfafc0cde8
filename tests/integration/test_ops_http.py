"""/health, /ready and /metrics over a real socket, with a real PostgreSQL that we stop and
restart underneath the running service to prove readiness and reconnection are truthful."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.service import DatabaseService
from streamspace.metrics_endpoint import MetricsAccess
from streamspace.web import ControlPlaneWeb, make_site
from tests.conftest import run
from tests.support.http import get_json, poll


@pytest.fixture
def own_cluster():
    """A private cluster this test may stop and start (the shared one must stay up)."""
    base = Path(tempfile.mkdtemp(prefix="streamspace-test-own-pg-"))
    os.chmod(base, 0o755)
    pg = EmbeddedPostgres(base, reactor, extra_settings={"fsync": "off"})
    yield pg
    run(pg.stop())
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def server(own_cluster):
    database = DatabaseService(reactor, None, 2, migrate=True, embedded=own_cluster)
    database.startService()
    run(_wait(database.ready))
    site = make_site(ControlPlaneWeb(database, metrics_access=MetricsAccess(dev=True)))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}", database, own_cluster
    run(_wait(port.stopListening()))
    run(_wait(database.stopService()))


async def _wait(d):
    return await d


@pytest_twisted.ensureDeferred
async def test_health_and_ready(server):
    url, _, _ = server
    assert await get_json(url + "/health") == (200, {"status": "healthy"})
    assert await get_json(url + "/ready") == (200, {"status": "ready"})


@pytest_twisted.ensureDeferred
async def test_ready_is_503_while_database_is_down_and_recovers(server):
    url, database, cluster = server
    await cluster.stop()

    async def not_ready():
        code, body = await get_json(url + "/ready")
        return (code, body) if code == 503 else None

    code, body = await poll(not_ready, what="/ready to turn 503")
    assert body["status"] == "not ready" and "database" in body["reason"]
    # liveness is unaffected: the process still runs
    assert (await get_json(url + "/health"))[0] == 200

    await cluster.start()  # same port: the pool's connections reconnect by themselves

    async def ready():
        code, _ = await get_json(url + "/ready")
        return code == 200

    await poll(ready, timeout=30, what="/ready to recover")


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_by_route_and_status(server):
    url, _, _ = server
    await get_json(url + "/health")
    await get_json(url + "/no/such/thing")
    import treq

    response = await treq.get(url + "/metrics")
    text = (await response.content()).decode()
    assert response.code == 200
    assert "process_cpu_seconds_total" in text or "python_info" in text
    assert 'streamspace_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'status="404"' in text
    assert "/no/such/thing" not in text  # paths never become labels


@pytest_twisted.ensureDeferred
async def test_unknown_path_gets_json_error(server):
    url, _, _ = server
    code, body = await get_json(url + "/api/v1/nothing-here")
    assert code == 404 and body["error"]["code"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_embedded_database_stops_with_the_service(own_cluster):
    database = DatabaseService(reactor, None, 1, migrate=True, embedded=own_cluster)
    database.startService()
    await database.ready
    pid = own_cluster._proto.transport.pid
    assert Path(f"/proc/{pid}").exists()
    await database.stopService()
    assert not own_cluster.running
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True




@pytest_twisted.ensureDeferred
async def test_embedded_database_killed_is_restarted_and_ready_recovers(server):
    """Issue 9 item 16: a dead embedded postmaster is restarted by the control plane
    (with backoff, logged); /ready goes 503 then 200 with no manual restart."""
    import os
    import signal

    from tests.support.processes import alive

    url, database, cluster = server
    first = cluster._proto.transport.pid
    os.kill(first, signal.SIGKILL)

    async def status():
        code, _ = await get_json(url + "/ready")
        return code

    async def not_ready():
        return await status() == 503

    await poll(not_ready, interval=0.02, what="/ready to turn 503 once the database died")

    async def ready():
        return await status() == 200

    await poll(ready, timeout=40, what="/ready to recover by itself")
    assert cluster.restarts == 1
    second = cluster._proto.transport.pid
    assert second != first and alive(second) and not alive(first)
