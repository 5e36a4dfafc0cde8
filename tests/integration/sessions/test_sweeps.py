"""The lifecycle sweep: stuck sessions, idle hibernation (its backoff and its audit), and
moves that hold only if what the sweep read still holds.

Real WebSockets, a real PostgreSQL, the real hub and lifecycle; scripted agents."""

import pytest_twisted

from streamspace.db import sessions as session_rows
from tests.support.http import poll
from tests.support.hub_agents import (
    commands_of,
    events_of,
    make_agent,
    make_session,
    processed,
    registered_client,
    running_session,
    state_of,
    wait_state,
)


@pytest_twisted.ensureDeferred
async def test_session_stuck_in_a_transitional_state_fails_with_a_reason(hub_server):
    base, fleet, db = hub_server
    sid = await make_session(db, state="waking")
    await db.execute("UPDATE sessions SET state_changed_at = now() - interval '1 hour' "
                     "WHERE id = %s", (sid,))
    await fleet.lifecycle.sweep()
    state, error = await state_of(db, sid)
    assert state == "failed" and "waking" in error and "longer than" in error


@pytest_twisted.ensureDeferred
async def test_a_sweep_acts_on_what_is_true_not_on_the_snapshot_it_read(hub_server,
                                                                        monkeypatch):
    """Issue 10 item 8: the sweep lists a session as stuck in `starting`; before it acts,
    the start completes. The session is running and must stay so."""
    base, fleet, db = hub_server
    await fleet.lifecycle.stop()  # only the sweep below runs
    sid = await make_session(db, state="starting")
    await db.execute("UPDATE sessions SET state_changed_at = now() - interval '1 hour' "
                     "WHERE id = %s", (sid,))
    listed = session_rows.ids_in_state

    async def list_then_race(database, states, **kwargs):
        found = await listed(database, states, **kwargs)
        if sid in found:  # the completion commits between the listing and the move
            await db.execute("UPDATE sessions SET state = 'running', "
                             "state_changed_at = now() WHERE id = %s", (sid,))
        return found

    monkeypatch.setattr(session_rows, "ids_in_state", list_then_race)
    await fleet.lifecycle.sweep()
    assert await state_of(db, sid) == ("running", None)


async def idle_running_session(fleet, db, client, idle_timeout=1.0):
    fleet.lifecycle.idle_timeout = idle_timeout
    sid = await running_session(fleet, db, client)
    await db.execute("UPDATE sessions SET last_activity = now() - interval '1 hour' "
                     "WHERE id = %s", (sid,))
    return sid


@pytest_twisted.ensureDeferred
async def test_idle_hibernation_is_audited_as_the_systems_doing(hub_server):
    """Issue 9 item 19: who hibernated it is recorded: the system."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-idle")
    client = await registered_client(base, "a-idle", token)
    sid = await idle_running_session(fleet, db, client)
    cmd = await client.next_of_type("command")
    assert cmd["payload"]["command_type"] == "hibernate_session"
    client.reported[sid] = "hibernated"
    client.frame("complete", {"command_id": cmd["payload"]["command_id"], "result": {}})
    await wait_state(db, sid, "hibernated")
    rows = await db.query("SELECT actor_id, actor_name, action, details FROM audit_log "
                          "WHERE target_id = %s", (sid,))
    assert [tuple(r) for r in rows] == [
        (None, "system", "session.hibernate",
         {"from": "running", "to": "hibernating", "reason": "idle", "attempt": 1})]
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_idle_hibernation_backs_off_and_says_so(hub_server):
    """Issue 10 item 4: the agent refuses the idle hibernation. The session stays running,
    its events say when the next try is, and the sweep (every 0.2 s here) does not send
    another hibernate until then; the next try says it is the second."""
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-backoff")
    client = await registered_client(base, "a-backoff", token)
    sid = await idle_running_session(fleet, db, client)
    cmd = await client.next_of_type("command")
    assert cmd["payload"]["command_type"] == "hibernate_session"
    client.frame("failed", {"command_id": cmd["payload"]["command_id"],
                            "reason": "the disk is full"})
    await wait_state(db, sid, "running")
    assert (await events_of(db, sid))[-1] == (
        "running", "hibernate_session failed: the disk is full; the idle hibernation is "
                   "tried again in 30s")
    for _ in range(5):
        await fleet.lifecycle.sweep()
    assert [c for c in await commands_of(db, sid) if c[0] == "hibernate_session"] == [
        ("hibernate_session", "failed")]
    await db.execute("UPDATE sessions SET idle_retry_at = now() WHERE id = %s", (sid,))
    again = await client.next_of_type("command")
    assert again["payload"]["command_type"] == "hibernate_session"

    async def second_attempt():
        events = await events_of(db, sid)
        return events if ("hibernating", "idle: hibernating (attempt 2; the last one "
                                         "failed)") in events else None

    await poll(second_attempt, what="the second attempt's event")
    client.close()


@pytest_twisted.ensureDeferred
async def test_waking_restarts_the_idle_clock(hub_server):
    """Issue 10 item 12: a session hibernated for idleness, woken, must not be put back
    to sleep at once because its idle clock still shows the old inactivity."""
    base, fleet, db = hub_server
    agent_uuid, token = await make_agent(db, "a-wake")
    client = await registered_client(base, "a-wake", token)
    fleet.lifecycle.idle_timeout = 5.0
    # no heartbeat in flight while the session appears: one sent before it is listed
    # would report the agent without it, and the session would be failed as lost
    client.beat.stop()
    await processed(db, client, "a-wake")
    sid = await make_session(db, state="hibernated", agent_uuid=agent_uuid)
    client.reported[sid] = "hibernated"
    client.beat.start(0.5)
    await db.execute("UPDATE sessions SET last_activity = now() - interval '1 hour' "
                     "WHERE id = %s", (sid,))
    from streamspace.sessions import requests
    from streamspace.sessions.moves import Actor

    user = (await db.query("SELECT user_id FROM sessions WHERE id = %s", (sid,)))[0][0]
    await requests.change_state(db, Actor(str(user), "owner"), sid, "running", owner_id=None,
                                default_limit=5, command_timeout=10.0)
    await fleet.lifecycle.session_changed(sid)
    cmd = await client.next_of_type("command")
    assert cmd["payload"]["command_type"] == "wake_session"
    assert cmd["payload"]["data"]["user"]["id"] == str(user)
    client.reported[sid] = "running"
    client.frame("complete", {"command_id": cmd["payload"]["command_id"], "result": {}})
    await wait_state(db, sid, "running")
    await fleet.lifecycle.sweep()
    assert (await state_of(db, sid))[0] == "running"
    rows = await db.query("SELECT last_activity > now() - interval '1 minute' FROM sessions "
                          "WHERE id = %s", (sid,))
    assert rows[0][0]
    client.close()
