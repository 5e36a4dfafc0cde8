"""/metrics: bounded labels whatever clients send, protected as the operator chooses, and
the series operators watch, read from a real stack (agent process, session, viewer)."""

from __future__ import annotations

import random
import re

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from streamspace.metrics_endpoint import MetricsAccess, metrics_site
from tests.conftest import run
from tests.support.http import poll
from tests.support.sites import listen_site
from tests.support.stack import make_stack
from tests.support.wsclient import connect

METRICS_TOKEN = "metrics-token-" + "m" * 20


@pytest.fixture
def site(db, tmp_path):
    url, port = listen_site(db, tmp_path)
    yield url
    run(_stopped(port))


async def _stopped(port):
    await port.stopListening()


class _Pipeline(protocol.Protocol):
    """Sends every request at once (HTTP/1.1 pipelining), the last with Connection: close,
    and fires `done` when the server closes: by then it has answered all of them."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.received = 0
        self._tail = b""
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"".join(self.requests))

    def dataReceived(self, data: bytes) -> None:
        seen = self._tail + data  # a status line may straddle two reads
        self.received += seen.count(b"HTTP/1.1 ")
        self._tail = seen[-8:]  # shorter than the marker: never counted twice

    def connectionLost(self, reason) -> None:
        self.done.callback(self.received)


def _invented(rng: random.Random, i: int) -> bytes:
    method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 12)))
    method = rng.choice([method, method, "GET", "POST", "DELETE", "get"])
    path = rng.choice(["/", "/api/v1/", "/api/v1/sessions/", "/vnc-viewer/", "/novnc/",
                       "/api/v1/agents/", "/api/v1/users/"]) + f"x{i}/{rng.random():.6f}"
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _request_series(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("streamspace_http_requests_total{")}


@pytest_twisted.ensureDeferred
async def test_20000_invented_methods_and_paths_keep_the_scrape_small(site):
    """Issue 9 item 4: methods and paths a client invents never become label values (the
    counters are process-wide, so what this test adds is measured against a first scrape)."""
    before_body = await (await treq.get(site + "/metrics")).content()
    before = _request_series(before_body.decode())
    rng = random.Random(9)
    connections, per_connection = 8, 2500
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(site.rsplit(":", 1)[1]))
    pipelines = []
    for c in range(connections):
        requests = [_invented(rng, c * per_connection + i) for i in range(per_connection)]
        requests.append(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        pipeline = _Pipeline(requests)
        await endpoint.connect(protocol.Factory.forProtocol(lambda p=pipeline: p))
        pipelines.append(pipeline)
    answered = await defer.gatherResults([p.done for p in pipelines])
    assert answered == [per_connection + 1] * connections
    body = await (await treq.get(site + "/metrics")).content()
    after = _request_series(body.decode())
    counted = sum(after.values()) - sum(before.values())
    assert counted >= connections * (per_connection + 1)  # (+ the first scrape)
    added = sorted(set(after) - set(before))
    methods = {re.search(r'method="([^"]*)"', key).group(1) for key in after}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    routes = {re.search(r'route="([^"]*)"', key).group(1) for key in after}
    assert not any(re.search(r"x\d", r) for r in routes), routes
    assert len(added) < 50, added
    assert len(body) - len(before_body) < 16 * 1024, len(body)


@pytest_twisted.ensureDeferred
async def test_metrics_off_by_default_behind_a_token_or_on_a_separate_address(db, tmp_path):
    token_header = {"Authorization": [f"Bearer {METRICS_TOKEN}"]}
    ports = []
    try:
        off, port = listen_site(db, tmp_path, MetricsAccess())
        ports.append(port)
        r = await treq.get(off + "/metrics")
        assert r.code == 404 and b"METRICS_TOKEN" in await r.content()

        guarded, port = listen_site(db, tmp_path, MetricsAccess(token=METRICS_TOKEN))
        ports.append(port)
        for headers in ({}, {"Authorization": ["Bearer wrong"]},
                        {"Authorization": [f"Basic {METRICS_TOKEN}"]}):
            r = await treq.get(guarded + "/metrics", headers=headers)
            assert r.code == 401 and r.headers.getRawHeaders("WWW-Authenticate") == ["Bearer"]
            assert b"streamspace_" not in await r.content()
        r = await treq.get(guarded + "/metrics", headers=token_header)
        assert r.code == 200 and b"streamspace_http_requests_total" in await r.content()

        separate = MetricsAccess(token=METRICS_TOKEN, separate=True)
        main, port = listen_site(db, tmp_path, separate)
        ports.append(port)
        r = await treq.get(main + "/metrics", headers=token_header)
        assert r.code == 404 and b"METRICS_ADDRESS" in await r.content()
        port = reactor.listenTCP(0, metrics_site(separate), interface="127.0.0.1")
        ports.append(port)
        only = f"http://127.0.0.1:{port.getHost().port}"
        assert (await treq.get(only + "/metrics")).code == 401
        r = await treq.get(only + "/metrics", headers=token_header)
        assert r.code == 200 and b"streamspace_websocket_connections" in await r.content()
        r = await treq.get(only + "/api/v1/users", headers=token_header)
        assert r.code == 404
        assert (await treq.post(only + "/metrics", headers=token_header)).code == 405
    finally:
        for port in ports:
            await port.stopListening()


def _value(text: str, name: str, **labels) -> float | None:
    """The sample `name{labels...}` in a scrape (label order as the client writes it)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def stack(migrated_dsn):
    s = make_stack(migrated_dsn, METRICS_TOKEN=METRICS_TOKEN)
    run(s.start())
    yield s
    leaked = s.cleanup_agents()
    run(s.stop())
    assert not leaked, f"session processes left behind: {leaked}"


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_operator_series_from_a_real_agent_session_and_viewer(stack):
    from streamspace import metrics

    refresher = stack.service.getServiceNamed("metrics-refresh")
    starts_before = _starts(await _scrape(stack))
    await stack.start_agent("metrics-agent")
    session = await stack.create_session("terminal")
    running = await stack.wait_state(session["id"], "running", "failed")
    assert running["state"] == "running", running
    viewer = await connect(await stack.vnc_url(session["id"]))

    async def linked():
        return metrics.TUNNELS_ACTIVE._value.get() >= 1

    await poll(linked, what="the viewer's tunnel to be linked")
    await refresher.refresh_once()  # the periodic refresh, run now rather than waited for
    text = await _scrape(stack)
    assert _value(text, "streamspace_agents", status="online") == 1
    assert _value(text, "streamspace_agents", status="offline") == 0
    assert _value(text, "streamspace_sessions", state="running", platform="local") == 1
    assert _value(text, "streamspace_sessions", state="failed", platform="local") == 0
    assert _value(text, "streamspace_websocket_connections", kind="agent") == 1
    assert _value(text, "streamspace_websocket_connections", kind="vnc") == 1
    assert _value(text, "streamspace_websocket_connections", kind="tunnel") == 1
    assert _value(text, "streamspace_vnc_tunnels_total", outcome="linked") >= 1
    assert _starts(text) == starts_before + 1
    assert _value(text, "streamspace_session_start_seconds_count",
                  platform="local", outcome="ok") >= 1
    assert _value(text, "streamspace_db_pool_size") >= 1
    assert _value(text, "streamspace_db_pool_connections", state="idle") is not None
    assert 0 <= _value(text, "streamspace_agent_heartbeat_age_seconds") < 10

    async def heartbeat_seen():
        return _value(await _scrape(stack), "streamspace_agent_heartbeat_latency_seconds_count")

    assert await poll(heartbeat_seen, what="a heartbeat to be measured") >= 1
    viewer.close()
    await viewer.wait_closed()

    async def viewer_gone():
        t = await _scrape(stack)
        return _value(t, "streamspace_websocket_connections", kind="vnc") == 0

    await poll(viewer_gone, what="the closed viewer to stop counting")


async def _scrape(stack) -> str:
    r = await treq.get(stack.base + "/metrics",
                       headers={"Authorization": [f"Bearer {METRICS_TOKEN}"]})
    assert r.code == 200
    return (await r.content()).decode()


def _starts(text: str) -> float:
    return _value(text, "streamspace_session_start_seconds_count", platform="local",
                  outcome="ok") or 0.0
