"""What agents report (register, heartbeat, session_status) decides what the database
believes, under the races that matter: a lost answer, an agent away, a restart.

Real WebSockets, a real PostgreSQL, the real hub and lifecycle; scripted agents."""

import json

import pytest_twisted

from tests.support.http import poll
from tests.support.hub_agents import (
    commands_of,
    events_of,
    heartbeat,
    make_agent,
    registered_client,
    running_session,
    state_of,
    wait_state,
)


async def audit_rows(db, session_id):
    rows = await db.query("SELECT actor_id, actor_name, action, details FROM audit_log "
                          "WHERE target_id = %s ORDER BY id", (session_id,))
    return [tuple(r) for r in rows]


@pytest_twisted.ensureDeferred
async def test_agent_offline_makes_sessions_unreachable_and_reconcile(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-rec")
    client = await registered_client(base, "a-rec", token)
    kept = await running_session(fleet, db, client)
    lost = await running_session(fleet, db, client)
    client.close()
    await client.wait_closed()
    await wait_state(db, kept, "unreachable")
    await wait_state(db, lost, "unreachable")
    client = await registered_client(base, "a-rec", token, sessions={kept: "running"})
    await wait_state(db, kept, "running")
    _, error = await wait_state(db, lost, "failed")
    assert error == "the agent restarted and no longer has this session"
    # the system, not a user, lost it: audited as such (issue 9, item 19)
    assert (None, "system", "session.lost",
            {"from": "unreachable", "to": "failed", "reason": error}) in await audit_rows(db, lost)
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_running_session_missing_from_heartbeats_fails_unless_a_command_is_on_its_way(
        hub_server):
    """The agent's driver answers from what really runs (e.g. a start replayed from its
    journal after its processes were reaped): a session it stops reporting is failed,
    not shown `running` with nothing behind it. A session with a command in flight is
    left to that command's answer."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-hb")
    client = await registered_client(base, "a-hb", token)
    gone = await running_session(fleet, db, client)
    busy = await running_session(fleet, db, client)
    # a hibernate is on its way for `busy`; the agent has not answered it yet
    await db.execute("UPDATE sessions SET state = 'hibernating' WHERE id = %s", (busy,))
    rows = await db.query("SELECT agent_id FROM sessions WHERE id = %s", (busy,))
    await db.execute("INSERT INTO agent_commands (agent_id, session_id, command_type, status, "
                     "deadline) VALUES (%s, %s, 'hibernate_session', 'sent', "
                     "now() + interval '1 minute')", (rows[0][0], busy))
    del client.reported[gone]
    del client.reported[busy]
    _, error = await wait_state(db, gone, "failed")
    assert error == "the agent no longer has this session"
    heartbeat(client)
    await fleet.lifecycle.sweep()
    assert (await state_of(db, busy))[0] == "hibernating"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_hibernate_answer_is_recognised_from_the_report(hub_server):
    """The agent hibernated it but its `complete` never arrived (the command timed out,
    the session went back to `running`): the agent reports it hibernated, and so it is."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-lost")
    client = await registered_client(base, "a-lost", token)
    sid = await running_session(fleet, db, client)
    client.reported[sid] = "hibernated"
    await wait_state(db, sid, "hibernated")
    assert (await events_of(db, sid))[-1] == ("hibernated", "the agent reports it hibernated")
    assert [c for c in await commands_of(db, sid) if c[0] == "stop_session"] == []
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_hibernate_that_times_out_while_the_agent_is_away_keeps_the_session(hub_server):
    """Issue 10 item 3: the hibernate was asked, the agent went away before answering,
    the command timed out. The session must not be shown `running` (nor later failed):
    it stays `unreachable` until the agent says what happened, and what the agent says
    (it did hibernate it) is what the session becomes."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-away")
    client = await registered_client(base, "a-away", token)
    sid = await running_session(fleet, db, client)
    await db.execute("UPDATE sessions SET state = 'hibernating' WHERE id = %s", (sid,))
    rows = await db.query("SELECT agent_id FROM sessions WHERE id = %s", (sid,))
    await db.execute("INSERT INTO agent_commands (agent_id, session_id, command_type, status, "
                     "deadline) VALUES (%s, %s, 'hibernate_session', 'sent', "
                     "now() + interval '1 second')", (rows[0][0], sid))
    client.close()
    await client.wait_closed()
    await wait_state(db, sid, "unreachable")

    async def timed_out():
        return ("hibernate_session", "timeout") in await commands_of(db, sid)

    await poll(timed_out, what="the hibernate to time out")
    await fleet.lifecycle.sweep()
    assert (await state_of(db, sid))[0] == "unreachable"
    client = await registered_client(base, "a-away", token, sessions={sid: "hibernated"})
    await wait_state(db, sid, "hibernated")
    client.close()


@pytest_twisted.ensureDeferred
async def test_an_application_that_exits_is_stopped_not_failed(hub_server):
    """Issue 10 item 12: `exit` in a terminal ends the session normally."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-exit")
    client = await registered_client(base, "a-exit", token)
    sid = await running_session(fleet, db, client)
    crashed = await running_session(fleet, db, client)
    del client.reported[sid]
    del client.reported[crashed]
    client.frame("session_status", {"session_id": sid, "state": "stopped",
                                    "reason": "the application exited"})
    client.frame("session_status", {"session_id": crashed, "state": "failed",
                                    "reason": "the application was killed by SIGKILL"})
    state, error = await wait_state(db, sid, "stopped")
    assert error is None
    assert (await events_of(db, sid))[-1] == ("stopped", "the application exited")
    _, error = await wait_state(db, crashed, "failed")
    assert error == "the application was killed by SIGKILL"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_session_unknown_to_the_control_plane_is_stopped_once(hub_server):
    base, fleet, db = hub_server
    agent_uuid, token = await make_agent(db, "a-orphan")
    orphan = "6b1f3b7e-9a52-4f0c-9d8e-2b1d3c4e5f60"
    client = await registered_client(base, "a-orphan", token, sessions={orphan: "running"})
    cmd = await client.next_of_type("command")
    assert cmd["payload"]["command_type"] == "stop_session"
    assert cmd["payload"]["data"] == {"session_id": orphan,
                                      "reason": "unknown to the control plane"}
    heartbeat(client)
    heartbeat(client)
    await fleet.lifecycle.sweep()

    async def stops():
        rows = await db.query("SELECT command_data FROM agent_commands WHERE agent_id = %s",
                              (agent_uuid,))
        return [json.dumps(r[0]) for r in rows]

    assert len(await stops()) == 1
    client.close()
