"""Faults that must stay with the agent (or the moment) that caused them (issue 9, items
8 and 14): a frame whose handling fails, a database that goes away for real, a capacity
no scheduler can read, a session row that breaks its transaction.

Real WebSockets, the real hub and lifecycle, a real PostgreSQL (its own cluster where the
test stops it); the agents are scripted (tests/support/hub_agents.py)."""

import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor

from streamspace.db import migrations
from streamspace.db.embedded import EmbeddedPostgres
from streamspace.db.pool import Database, DatabaseUnavailable
from tests.conftest import run
from tests.support.http import poll
from tests.support.hub_agents import (
    agent_status,
    answer_start,
    make_agent,
    make_session,
    processed,
    registered_client,
    start_hub,
    state_of,
    wait_state,
)
from tests.support.polling import sleep, until
from tests.support.wsclient import connect


async def inject_failure(db, table: str, operation: str, when: str = "true") -> None:
    """A real database error on `operation` of `table` rows (matching `when`)."""
    await db.execute("CREATE OR REPLACE FUNCTION injected_failure() RETURNS trigger "
                     "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$")
    await db.execute(f"CREATE TRIGGER injected_failure BEFORE {operation} ON {table} "
                     f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION injected_failure()")


async def remove_failure(db, table: str) -> None:
    await db.execute(f"DROP TRIGGER injected_failure ON {table}")


@pytest_twisted.ensureDeferred
async def test_a_frame_whose_handling_fails_closes_cleanly_and_is_sent_again(hub_server):
    """Storing a `complete` fails (a database error that is not an outage, standing for
    any bug): the connection is closed with 4011, a code WebSocket libraries accept
    (autobahn refuses to send 1011: applications may send only 1000 and 3000-4999), and
    forgotten, so the agent reconnects at once, no 409; the command is redelivered and its
    outcome, answered again, is stored once the fault is gone. Nothing is wedged."""
    base, fleet, db = hub_server
    agent_uuid, token = await make_agent(db, "a-fault")
    client = await registered_client(base, "a-fault", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    cmd = await client.next_of_type("command")
    command_id = cmd["payload"]["command_id"]
    _, other_token = await make_agent(db, "a-bystander")
    bystander = await registered_client(base, "a-bystander", other_token)
    await inject_failure(db, "agent_commands", "UPDATE", "NEW.status = 'completed'")
    client.frame("complete", {"command_id": command_id, "result": {}})
    code, reason = await client.wait_closed()
    assert code == 4011 and "complete" in reason, (code, reason)
    await until(lambda: agent_uuid not in fleet.hub.links, what="the hub to forget it")
    await processed(db, bystander, "a-bystander")  # the others are served as before
    await remove_failure(db, "agent_commands")
    client = await registered_client(base, "a-fault", token)
    again = await client.next_of_type("command")
    assert again["payload"]["command_id"] == command_id  # redelivered: answered again
    client.reported[sid] = "running"
    client.frame("complete", {"command_id": command_id, "result": {}})
    await wait_state(db, sid, "running")
    client.close()
    bystander.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_heartbeat_is_dropped_alone(hub_server):
    """A heartbeat whose storing fails is skipped (the next one says the same): the
    connection stays up and commands still flow."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-hb-fault")
    client = await registered_client(base, "a-hb-fault", token)
    _, before = await agent_status(db, "a-hb-fault")
    await inject_failure(db, "agents", "UPDATE")
    await sleep(1.5)  # three heartbeats fail to be stored; none may close the connection
    assert not client.closed.called
    assert (await agent_status(db, "a-hb-fault"))[1] == before
    await remove_failure(db, "agents")
    await processed(db, client, "a-hb-fault")
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    await answer_start(client, sid)
    await wait_state(db, sid, "running")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_bad_capacity_is_refused_alone_and_never_stops_scheduling(hub_server):
    """Issue 9 item 8: `capacity` of a string or `{"max_sessions": "x"}` is refused at
    `register` (4000, with the reason); a malformed capacity already in the table makes
    that agent unusable, with the reason, and the session goes to another agent."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-badcap")
    for capacity in ("lots", {"max_sessions": "x"}, {"max_cpu": -1}, {"max_sessions": 1.5},
                     {"gpus": 2}):
        raw = await connect(f"ws://{base}/api/v1/agent/connect?agent_id=a-badcap",
                            headers={"Authorization": f"Bearer {token}"})
        raw.frame("register", {"agent_id": "a-badcap", "platform": "local", "region": "",
                               "protocol_version": 1, "capacity": capacity, "sessions": [],
                               "metadata": {}})
        code, reason = await raw.wait_closed()
        assert code == 4000 and "capacity" in reason, (capacity, code, reason)
    assert (await agent_status(db, "a-badcap"))[0] == "offline"
    # a row written before validation existed: online, with a capacity nobody can read
    await db.execute("UPDATE agents SET status = 'online', capacity = '\"lots\"' "
                     "WHERE agent_id = 'a-badcap'")
    _, good_token = await make_agent(db, "a-goodcap")
    good = await registered_client(base, "a-goodcap", good_token, capacity={"max_sessions": 5})
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    await answer_start(good, sid)
    await wait_state(db, sid, "running")
    good.close()


@pytest_twisted.ensureDeferred
async def test_one_bad_row_never_aborts_the_sweep(hub_server):
    """A session whose placement fails (a database error on its row) is skipped; the
    sweep still places the next one."""
    base, fleet, db = hub_server
    broken, fine = await make_session(db), await make_session(db)
    await inject_failure(db, "sessions", "UPDATE", f"OLD.id = '{broken}'")
    _, token = await make_agent(db, "a-sweep")
    client = await registered_client(base, "a-sweep", token)
    await answer_start(client, fine)
    await wait_state(db, fine, "running")
    assert (await state_of(db, broken))[0] == "pending"
    await remove_failure(db, "sessions")
    await answer_start(client, broken)
    await wait_state(db, broken, "running")
    client.close()


# -- a database outage, for real ------------------------------------------------------------

@pytest.fixture(scope="module")
def own_cluster():
    """A PostgreSQL cluster of this module's own: the test stops and starts it."""
    base = Path(tempfile.mkdtemp(prefix="streamspace-outage-pg-"))
    base.chmod(0o755)
    pg = EmbeddedPostgres(base, reactor, extra_settings={"fsync": "off"})
    run(pg.start())
    db = Database(pg.dsn, 1, reactor)
    run(db.start())
    run(migrations.migrate(db))
    db.close()
    yield pg
    run(pg.stop())
    shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_database_outage_never_disconnects_or_wedges_an_agent(own_cluster):
    """Issue 9 item 14: PostgreSQL stops for longer than the heartbeat timeout while an
    agent heartbeats and reports a command's outcome. The agent stays connected; when
    the database is back the outcome is stored (nothing dropped), the agent is online
    with a fresh heartbeat and new commands reach it."""
    db = Database(own_cluster.dsn, 3, reactor)
    await db.start()
    base, fleet, stop = await start_hub(db, command_timeout=60.0)
    try:
        _, token = await make_agent(db, "a-outage")
        client = await registered_client(base, "a-outage", token)
        sid = await make_session(db)
        await fleet.lifecycle.session_changed(sid)
        cmd = await client.next_of_type("command")
        await own_cluster.stop()
        client.frame("ack", {"command_id": cmd["payload"]["command_id"]})
        client.reported[sid] = "running"
        client.frame("complete", {"command_id": cmd["payload"]["command_id"], "result": {}})
        # longer than the heartbeat timeout (2 s): the hub judges liveness on what
        # arrives, not on what it could store
        await sleep(5.0)
        assert not client.closed.called
        await own_cluster.start()

        async def reconnected():  # every connection of the pool answers again
            try:
                return await defer.gatherResults(
                    [defer.Deferred.fromCoroutine(db.query("SELECT pg_sleep(0.05)"))
                     for _ in range(db.size)], consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.trap(DatabaseUnavailable)
                return None

        await poll(reconnected, what="the pool to reconnect")
        await wait_state(db, sid, "running", timeout=20)
        assert not client.closed.called
        await processed(db, client, "a-outage")
        assert (await agent_status(db, "a-outage"))[0] == "online"
        second = await make_session(db)
        await fleet.lifecycle.session_changed(second)
        await answer_start(client, second)
        await wait_state(db, second, "running")
        client.close()
    finally:
        if not own_cluster.running:
            await own_cluster.start()
        await stop()
        db.close()


# -- start-up -----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_fleet_start_up_is_retried_and_ready_waits_for_it(db):
    """Issue 10 item 7: marking every agent offline at start-up fails (a database
    error): /ready says 503 with the reason, agents are told to retry (503 `starting`);
    once it works, the fleet starts by itself and /ready says 200."""
    await make_agent(db, "a-stale")
    await db.execute("UPDATE agents SET status = 'online'")
    await inject_failure(db, "agents", "UPDATE")
    from streamspace.agents.service import build_fleet
    from streamspace.web import ControlPlaneWeb, make_site
    from tests.support.hub_agents import DatabaseStub

    fleet = build_fleet(reactor, DatabaseStub(db), heartbeat_timeout=2.0, command_timeout=2.0,
                        heartbeat_interval=0.5, sweep_interval=0.2)
    fleet.service.startService()
    port = reactor.listenTCP(0, make_site(ControlPlaneWeb(fleet.service,
                                                          websockets=fleet.websockets())),
                             interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        async def not_ready():
            r = await treq.get(url + "/ready")
            body = await r.json()
            return body if r.code == 503 and "fleet start-up failed" in body["reason"] else None

        body = await poll(not_ready, what="/ready to report the failed start-up")
        assert "injected failure" in body["reason"]
        r = await treq.get(url + "/api/v1/agent/connect?agent_id=a-stale")
        assert r.code == 503 and (await r.json())["error"]["code"] == "starting"
        await remove_failure(db, "agents")

        async def ready():
            r = await treq.get(url + "/ready")
            return r.code == 200

        await poll(ready, timeout=20, what="/ready once the start-up succeeded")
        assert (await agent_status(db, "a-stale"))[0] == "offline"
        assert fleet.hub.accepting
    finally:
        await fleet.service.stopService()
        await port.stopListening()


@pytest.fixture
def roomy_db(migrated_dsn):
    """Enough connections that nothing here waits for the pool, only for the lock."""
    database = Database(migrated_dsn, 8, reactor)
    run(database.start())
    yield database
    database.close()


@pytest_twisted.ensureDeferred
async def test_stopping_waits_for_a_frame_still_being_stored(roomy_db):
    """A report that arrives as the control plane stops (a local agent's last "session
    stopped") must finish its transaction before the database closes: cut off, it left
    "cursor already closed" tracebacks in the log of `make run`'s Ctrl-C. Here the
    report's transaction waits on its session's row lock (a hibernated session, which
    marking the agent offline does not touch) while the fleet stops."""
    db = roomy_db
    base, fleet, stop = await start_hub(db)
    agent_uuid, token = await make_agent(db, "a-going")
    sid = await make_session(db, state="hibernated", agent_uuid=agent_uuid)
    client = await registered_client(base, "a-going", token, sessions={sid: "hibernated"})
    locked, gate = defer.Deferred(), defer.Deferred()

    async def hold(cursor):
        await cursor.execute("SELECT 1 FROM sessions WHERE id = %s FOR UPDATE", (sid,))
        locked.callback(None)
        await gate

    holder = defer.Deferred.fromCoroutine(db.transaction(hold))
    await locked
    client.frame("session_status", {"session_id": sid, "state": "failed",
                                    "reason": "its display server died"})

    async def waiting_on_the_lock():
        rows = await db.query("SELECT count(*) FROM pg_stat_activity WHERE "
                              "wait_event_type = 'Lock' AND datname = current_database()")
        return rows[0][0] == 1

    await poll(waiting_on_the_lock, what="the report to wait on the session's row lock")
    stopping = defer.ensureDeferred(stop())
    await sleep(0.3)
    assert not stopping.called, "the fleet stopped while a frame was still being stored"
    gate.callback(None)
    await holder
    await stopping
