"""Commands through the queue: start, ack, complete, timeouts, redelivery, progress.

Real WebSockets, a real PostgreSQL, the real hub and lifecycle; the agent is scripted
(tests/support/hub_agents.py) so each answer comes exactly when the test says."""

import pytest_twisted

from tests.support.http import poll
from tests.support.hub_agents import (
    answer_start,
    commands_of,
    events_of,
    make_agent,
    make_session,
    processed,
    registered_client,
    state_of,
    wait_state,
)


@pytest_twisted.ensureDeferred
async def test_start_command_ack_complete_makes_session_running(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-run")
    client = await registered_client(base, "a-run", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    assert (await state_of(db, sid))[0] == "scheduled"
    cmd = await client.next_of_type("command")
    p = cmd["payload"]
    assert p["command_type"] == "start_session" and p["session_id"] == sid
    assert p["data"]["template"]["platforms"]["local"]["command"] == "xterm"
    client.frame("ack", {"command_id": p["command_id"]})
    await wait_state(db, sid, "starting")
    client.reported[sid] = "running"
    client.frame("complete", {"command_id": p["command_id"], "result": {}})
    await wait_state(db, sid, "running")
    rows = await db.query("SELECT status, sent_at, acked_at, completed_at FROM agent_commands "
                          "WHERE id = %s", (p["command_id"],))
    assert rows[0][0] == "completed" and all(rows[0][1:])
    assert [e[0] for e in await events_of(db, sid)] == ["scheduled", "starting", "running"]
    # a heartbeat that reports it keeps it running
    await processed(db, client, "a-run")
    assert (await state_of(db, sid))[0] == "running"
    client.close()


@pytest_twisted.ensureDeferred
async def test_progress_from_the_driver_becomes_an_event_without_a_move(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-progress")
    _, other_token = await make_agent(db, "a-other")
    client = await registered_client(base, "a-progress", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    await client.next_of_type("command")
    other = await registered_client(base, "a-other", other_token)
    # another agent cannot write into this session's events
    other.frame("session_progress", {"session_id": sid, "message": "forged"})
    client.frame("session_progress", {"session_id": sid,
                                      "message": "pulling image example/desktop: 40%"})

    async def progressed():
        events = await events_of(db, sid)
        return events if len(events) >= 2 else None

    events = await poll(progressed, what="the progress event")
    assert events[1:] == [("scheduled", "pulling image example/desktop: 40%")]
    await processed(db, other, "a-other")
    assert len(await events_of(db, sid)) == 2
    assert (await state_of(db, sid))[0] == "scheduled"
    client.close()
    other.close()


@pytest_twisted.ensureDeferred
async def test_unanswered_command_times_out_and_a_late_completion_changes_nothing(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-slow")
    client = await registered_client(base, "a-slow", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    cmd = await client.next_of_type("command")
    command_id = cmd["payload"]["command_id"]
    client.frame("ack", {"command_id": command_id})
    _, error = await wait_state(db, sid, "failed", timeout=15)
    assert "did not start" in error and "timed out" in error
    assert await commands_of(db, sid) == [("start_session", "timeout")]
    # a late completion changes nothing: checked once the hub has handled it
    client.frame("complete", {"command_id": command_id, "result": {}})
    await processed(db, client, "a-slow")
    assert (await state_of(db, sid))[0] == "failed"
    assert await commands_of(db, sid) == [("start_session", "timeout")]
    # ...but the agent now reports it running: what the control plane let go of is stopped
    client.reported[sid] = "running"
    stop = await client.next_of_type("command")
    assert (stop["payload"]["command_type"], stop["payload"]["session_id"]) == \
        ("stop_session", sid)
    await processed(db, client, "a-slow")  # and only once, however many heartbeats
    assert await commands_of(db, sid) == [("start_session", "timeout"), ("stop_session", "sent")]
    client.close()


@pytest_twisted.ensureDeferred
async def test_commands_for_offline_agent_wait_and_are_redelivered(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-back")
    client = await registered_client(base, "a-back", token)
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    first = await client.next_of_type("command")
    client.close()
    await client.wait_closed()
    # reconnects: the unanswered command comes again with the same id (agent dedupes)
    client = await registered_client(base, "a-back", token)
    again = await client.next_of_type("command")
    assert again["payload"]["command_id"] == first["payload"]["command_id"]
    client.reported[sid] = "running"
    client.frame("complete", {"command_id": again["payload"]["command_id"], "result": {}})
    await wait_state(db, sid, "running")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_queued_command_whose_delivery_was_lost_is_sent_by_the_sweep(hub_server):
    """The control plane committed a command but never sent it (it stopped right after
    the commit): the sweep finds it `pending` and sends it."""
    base, fleet, db = hub_server
    agent_uuid, token = await make_agent(db, "a-lost")
    client = await registered_client(base, "a-lost", token)
    sid = await make_session(db, state="running", agent_uuid=agent_uuid)
    client.reported[sid] = "running"
    rows = await db.query(
        "INSERT INTO agent_commands (agent_id, session_id, command_type, deadline) VALUES "
        "(%s, %s, 'hibernate_session', now() + interval '1 minute') RETURNING id",
        (agent_uuid, sid))
    cmd = await client.next_of_type("command", timeout=10)
    assert cmd["payload"]["command_id"] == str(rows[0][0])
    client.close()


@pytest_twisted.ensureDeferred
async def test_capacity_respected_under_concurrent_creates_and_the_rest_wait(hub_server):
    """Two fit; the other four wait `pending` with the reason in their events (the
    pending-wait policy), and one is placed as soon as a place frees up."""
    from twisted.internet import defer

    base, fleet, db = hub_server
    _, token = await make_agent(db, "a-small", capacity={"max_sessions": 2})
    client = await registered_client(base, "a-small", token, capacity={"max_sessions": 2})
    sids = [await make_session(db) for _ in range(6)]
    await defer.gatherResults([defer.Deferred.fromCoroutine(fleet.lifecycle.session_changed(s))
                               for s in sids])
    states_ = {s: (await state_of(db, s))[0] for s in sids}
    scheduled = [s for s in sids if states_[s] == "scheduled"]
    waiting = [s for s in sids if states_[s] == "pending"]
    assert len(scheduled) == 2 and len(waiting) == 4, states_
    for s in waiting:
        events = await events_of(db, s)
        assert events[-1][0] == "pending" and "capacity" in events[-1][1], events
        assert "a-small runs 2/2 sessions" in events[-1][1]
    # the reason is written once, not once per sweep
    count = len(await events_of(db, waiting[0]))
    await fleet.lifecycle.sweep()
    await fleet.lifecycle.sweep()
    assert len(await events_of(db, waiting[0])) == count
    # one of the two ends: a waiting session takes its place
    done = scheduled[0]
    await db.execute("UPDATE sessions SET state = 'terminated' WHERE id = %s", (done,))

    async def one_placed():
        placed = [s for s in waiting if (await state_of(db, s))[0] == "scheduled"]
        return placed if len(placed) == 1 else None

    await poll(one_placed, what="a waiting session to take the freed place")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_session_with_no_agent_waits_then_runs_when_one_comes(hub_server):
    """Pending-wait, not fail-fast: no agent at all yet (a session created right after
    start-up); the agent registers; the session starts."""
    base, fleet, db = hub_server
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    assert (await state_of(db, sid))[0] == "pending"
    events = await events_of(db, sid)
    assert events[-1] == ("pending", "waiting for an agent: no online agent matches the "
                                     "requested platform/region")
    _, token = await make_agent(db, "a-late")
    client = await registered_client(base, "a-late", token)
    await answer_start(client, sid)
    await wait_state(db, sid, "running")
    client.close()


@pytest_twisted.ensureDeferred
async def test_pending_timeout_fails_with_the_last_reason(hub_server):
    base, fleet, db = hub_server
    sid = await make_session(db)
    await fleet.lifecycle.session_changed(sid)
    await db.execute("UPDATE sessions SET state_changed_at = now() - interval '1 hour' "
                     "WHERE id = %s", (sid,))
    _, error = await wait_state(db, sid, "failed")
    assert error == ("no agent could take this session within 300s: no online agent "
                     "matches the requested platform/region")
