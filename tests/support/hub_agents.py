"""The agent hub over real WebSockets and a real PostgreSQL, with scripted agents.

A scripted agent is a real WebSocket client speaking docs/protocol.md frame by frame: it
stands for a real agent where a test must produce each answer (or misbehaviour) on
demand, at a precise moment. Like a real agent it heartbeats and reports the sessions it
"runs" (`client.reported`), which the control plane reconciles on every heartbeat. The
real `twistd agent` is exercised in tests/integration/test_lifecycle_e2e.py.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer, reactor, task

from streamspace.agents.service import build_fleet
from streamspace.auth import agent_tokens
from streamspace.web import ControlPlaneWeb, make_site
from tests.conftest import run
from tests.support.http import poll
from tests.support.polling import until
from tests.support.wsclient import TestClient, connect


class DatabaseStub:
    """What the fleet needs of DatabaseService in-process: the Database, already ready."""

    def __init__(self, db):
        self.db = db
        self.ready = defer.succeed(db)

    async def readiness(self):
        return True, "ok"


async def start_hub(db, **options):
    """(base "host:port", fleet, async stop()) for a hub on 127.0.0.1 over `db`."""
    settings = {"heartbeat_timeout": 2.0, "command_timeout": 2.0, "heartbeat_interval": 0.5,
                "sweep_interval": 0.2, **options}
    fleet = build_fleet(reactor, DatabaseStub(db), **settings)
    fleet.service.startService()
    await until(lambda: fleet.hub.accepting, what="the hub to accept agents")
    site = make_site(ControlPlaneWeb(fleet.service, websockets=fleet.websockets()))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    async def stop():
        await fleet.service.stopService()
        await port.stopListening()

    return f"127.0.0.1:{port.getHost().port}", fleet, stop


def serve_hub(db, **options):
    """`start_hub` for synchronous fixtures: (base, fleet, stop())."""
    base, fleet, stop = run(start_hub(db, **options))
    return base, fleet, lambda: run(stop())


@pytest.fixture
def hub_server(db):
    base, fleet, stop = serve_hub(db)
    yield base, fleet, db
    stop()


async def make_agent(db, agent_id="agent-1", platform="local", region="", capacity=None):
    token = agent_tokens.generate()
    rows = await db.query(
        "INSERT INTO agents (agent_id, platform, region, token_hash, capacity) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (agent_id, platform, region, agent_tokens.hash_token(token),
         json.dumps(capacity or {})))
    return str(rows[0][0]), token


async def make_user(db, max_sessions=None):
    rows = await db.query("INSERT INTO users (username, password_hash, max_sessions) VALUES "
                          "('u' || substr(md5(random()::text), 1, 8), 'x', %s) RETURNING id",
                          (max_sessions,))
    return str(rows[0][0])


async def make_session(db, template_cpu=1, template_mem=512, user=None, state="pending",
                       agent_uuid=None):
    user = user or await make_user(db)
    tpl = await db.query("SELECT id FROM templates WHERE name = 'tpl'")
    if not tpl:
        tpl = await db.query(
            "INSERT INTO templates (name, display_name, cpu, memory_mb, platforms) "
            "VALUES ('tpl', 'Template', %s, %s, %s) RETURNING id",
            (template_cpu, template_mem, json.dumps({"local": {"command": "xterm"}})))
    rows = await db.query(
        "INSERT INTO sessions (user_id, template_id, template_name, state, agent_id) "
        "VALUES (%s, %s, 'tpl', %s, %s) RETURNING id", (user, tpl[0][0], state, agent_uuid))
    return str(rows[0][0])


async def state_of(db, session_id):
    rows = await db.query("SELECT state, error FROM sessions WHERE id = %s", (session_id,))
    return rows[0]


async def wait_state(db, session_id, *wanted, timeout=10.0):
    async def check():
        state, error = await state_of(db, session_id)
        return (state, error) if state in wanted else None

    return await poll(check, timeout=timeout, what=f"session {session_id} to be {wanted}")


async def agent_status(db, agent_id):
    rows = await db.query("SELECT status, last_heartbeat FROM agents WHERE agent_id = %s",
                          (agent_id,))
    return rows[0]


async def events_of(db, session_id):
    rows = await db.query("SELECT state, message FROM session_events WHERE session_id = %s "
                          "ORDER BY id", (session_id,))
    return [tuple(r) for r in rows]


async def commands_of(db, session_id):
    rows = await db.query("SELECT command_type, status FROM agent_commands "
                          "WHERE session_id = %s ORDER BY created_at, id", (session_id,))
    return [tuple(r) for r in rows]


async def registered_client(base, agent_id, token, sessions=None, capacity=None,
                            keepalive=True, interval=0.5) -> TestClient:
    """A scripted agent, registered. `client.reported` (session id -> state) is what its
    register and heartbeats say it runs; tests keep it true as they answer commands."""
    client = await connect(f"ws://{base}/api/v1/agent/connect?agent_id={agent_id}",
                           headers={"Authorization": f"Bearer {token}"})
    client.reported = dict(sessions or {})
    client.frame("register", {"agent_id": agent_id, "platform": "local", "region": "",
                              "protocol_version": 1, "capacity": capacity or {},
                              "sessions": listed(client.reported),
                              "metadata": {"hostname": "test"}})
    reply = await client.next_of_type("registered")
    assert reply["payload"]["agent_id"] == agent_id
    if keepalive:  # heartbeats like a real agent, so only the silence test goes silent
        beat = task.LoopingCall(lambda: heartbeat(client))
        beat.start(interval, now=False)
        client.beat = beat  # tests pause it while they change what the agent reports
        client.closed.addBoth(lambda r: (beat.running and beat.stop(), r)[1])
    return client


def listed(reported: dict) -> list[dict]:
    return [{"session_id": sid, "state": state} for sid, state in reported.items()]


def heartbeat(client: TestClient) -> None:
    client.frame("heartbeat", {"usage": {}, "sessions": listed(client.reported)})


async def processed(db, client: TestClient, agent_id: str) -> None:
    """Frames of one agent are handled in order: once a heartbeat sent now is recorded,
    everything the client sent before it has been handled."""
    _, before = await agent_status(db, agent_id)
    heartbeat(client)

    async def recorded():
        return (await agent_status(db, agent_id))[1] > before

    await poll(recorded, what="the frames before a heartbeat to be handled")


async def answer_start(client: TestClient, session_id: str | None = None) -> dict:
    """Take the next command (a start), ack it, run it (reported), complete it."""
    cmd = await client.next_of_type("command")
    p = cmd["payload"]
    assert p["command_type"] == "start_session", p
    if session_id is not None:
        assert p["session_id"] == session_id
    client.frame("ack", {"command_id": p["command_id"]})
    client.reported[p["session_id"]] = "running"
    client.frame("complete", {"command_id": p["command_id"], "result": {}})
    return p


async def running_session(fleet, db, client: TestClient) -> str:
    """A new session, placed, started by the scripted agent `client`, running."""
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    await answer_start(client, sid)
    await wait_state(db, sid, "running")
    return sid
