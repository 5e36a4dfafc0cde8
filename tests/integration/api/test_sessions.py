"""Sessions: create (limits, races, owners), read, hibernate/wake/restart, delete, the
lifecycle hook, and the one write path (a state change, its command and its audit row
commit together or not at all)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from tests.integration.api.support import (
    count,
    make_agent,
    make_session,
    make_template,
    make_user,
    token_for,
)


def gather(*coros):
    return defer.gatherResults([defer.Deferred.fromCoroutine(c) for c in coros])


async def online(db, agent_uuid):
    await db.execute("UPDATE agents SET status = 'online' WHERE id = %s", (agent_uuid,))


async def commands(db, session_id):
    rows = await db.query("SELECT command_type, status FROM agent_commands "
                          "WHERE session_id = %s ORDER BY created_at, id", (session_id,))
    return [tuple(r) for r in rows]


async def state_of(db, session_id):
    rows = await db.query("SELECT state FROM sessions WHERE id = %s", (session_id,))
    return rows[0][0]


class RecordingLifecycle:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    async def session_changed(self, session_id):
        self.calls.append(("session_changed", session_id))
        if self.fail:
            raise RuntimeError("lifecycle exploded")


@pytest_twisted.ensureDeferred
async def test_create_read_list_and_owner_from_the_token(client, db, ctx):
    lifecycle = RecordingLifecycle()
    ctx.extras["lifecycle"] = lifecycle
    alice = await make_user(db, "alice")
    await make_template(db)
    token = token_for(alice)
    r = await client.post("/api/v1/sessions", {"template": "terminal", "state": "running"},
                          token=token)
    assert r.status == 201, r.body
    s = r.json
    assert s["owner"] == "alice" and s["user_id"] == alice["id"]
    assert s["state"] == "pending" and s["template"] == "terminal"
    assert s["viewer_url"] == f"/vnc-viewer/{s['id']}"
    assert s["agent_id"] is None and s["error"] is None
    assert r.header("Location") == f"/api/v1/sessions/{s['id']}"
    assert lifecycle.calls == [("session_changed", s["id"])]
    assert await count(db, "session_events", "session_id = %s AND state = 'pending'",
                       (s["id"],)) == 1
    assert await count(db, "audit_log", "action = 'session.create' AND target_id = %s",
                       (s["id"],)) == 1

    one = await client.get(f"/api/v1/sessions/{s['id']}", token=token)
    assert one.status == 200 and one.json["id"] == s["id"]
    listed = await client.get("/api/v1/sessions", token=token)
    assert [x["id"] for x in listed.json] == [s["id"]]


@pytest_twisted.ensureDeferred
async def test_lifecycle_errors_do_not_fail_the_request(client, db, ctx):
    ctx.extras["lifecycle"] = RecordingLifecycle(fail=True)
    alice = await make_user(db, "alice")
    await make_template(db)
    r = await client.post("/api/v1/sessions", {"template": "terminal"}, token=token_for(alice))
    assert r.status == 201
    d = await client.delete(f"/api/v1/sessions/{r.json['id']}", token=token_for(alice))
    assert d.status == 202


@pytest_twisted.ensureDeferred
async def test_other_users_sessions_are_404_everywhere(client, db):
    alice, bob = await make_user(db, "alice"), await make_user(db, "bob")
    admin = await make_user(db, "root", role="admin")
    template = await make_template(db)
    sid = await make_session(db, alice, template, state="running")
    bob_token = token_for(bob)
    for method, path, body in (("GET", f"/api/v1/sessions/{sid}", None),
                               ("PATCH", f"/api/v1/sessions/{sid}", {"state": "hibernated"}),
                               ("DELETE", f"/api/v1/sessions/{sid}", None)):
        r = await client.request(method, path, json_body=body, token=bob_token)
        assert r.status == 404 and r.code == "not_found", (method, r.body)
    assert (await client.get("/api/v1/sessions", token=bob_token)).json == []
    # ...and nothing changed; the admin sees it
    r = await client.get(f"/api/v1/sessions/{sid}", token=token_for(admin))
    assert r.status == 200 and r.json["state"] == "running"
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-00000000000", "%00", "..%2f"):
        r = await client.get(f"/api/v1/sessions/{bad}", token=bob_token)
        assert r.status == 404, bad


@pytest_twisted.ensureDeferred
async def test_seed_body_user_field_only_for_admins(client, db):
    alice = await make_user(db, "alice")
    await make_user(db, "testuser")
    admin = await make_user(db, "root", role="admin")
    await make_template(db, name="firefox-browser")
    seed = {"user": "testuser", "template": "firefox-browser", "state": "running"}
    r = await client.post("/api/v1/sessions", seed, token=token_for(alice))
    assert r.status == 403 and r.code == "forbidden"
    own = await client.post("/api/v1/sessions", {**seed, "user": "alice"},
                            token=token_for(alice))
    assert own.status == 201 and own.json["owner"] == "alice"
    r = await client.post("/api/v1/sessions", seed, token=token_for(admin))
    assert r.status == 201 and r.json["owner"] == "testuser"
    r = await client.post("/api/v1/sessions", {**seed, "user": "ghost"}, token=token_for(admin))
    assert r.status == 400 and r.code == "unknown_user"
    assert await count(db, "sessions") == 2


@pytest_twisted.ensureDeferred
async def test_template_and_platform_checks(client, db):
    alice = await make_user(db, "alice")
    await make_template(db)
    await make_template(db, name="off", enabled=False)
    token = token_for(alice)
    for body, code in (({"template": "nope"}, "unknown_template"),
                       ({"template": "off"}, "unknown_template"),
                       ({"template": "terminal", "platform": "docker"}, "unsupported_platform"),
                       ({"template": "terminal", "state": "hibernated"}, "invalid_request"),
                       ({"template": "terminal", "owner": "x"}, "invalid_request")):
        r = await client.post("/api/v1/sessions", body, token=token)
        assert r.status == 400 and r.code == code, (body, r.body)
    r = await client.post("/api/v1/sessions", {"template": "terminal", "platform": "local",
                                               "region": "eu-1", "name": "my term"},
                          token=token)
    assert r.status == 201
    assert r.json["requested_platform"] == "local" and r.json["requested_region"] == "eu-1"
    assert r.json["name"] == "my term"
    assert await count(db, "sessions") == 1


@pytest_twisted.ensureDeferred
async def test_limit_holds_under_twenty_racing_creates(client, db):
    alice = await make_user(db, "alice", max_sessions=3)
    await make_template(db)
    token = token_for(alice)
    results = await gather(*[client.post("/api/v1/sessions", {"template": "terminal"},
                                         token=token) for _ in range(20)])
    statuses = sorted(r.status for r in results)
    assert statuses == [201] * 3 + [409] * 17, statuses
    refused = next(r for r in results if r.status == 409)
    assert refused.code == "session_limit_reached"
    assert "limit is 3" in refused.json["error"]["message"]
    assert await count(db, "sessions", "user_id = %s", (alice["id"],)) == 3
    assert await count(db, "audit_log", "action = 'session.create'") == 3


@pytest_twisted.ensureDeferred
async def test_default_limit_and_what_counts(client, db):
    bob = await make_user(db, "bob")  # no override: ctx.default_max_sessions = 3
    template = await make_template(db)
    for state in ("running", "hibernated", "terminated", "failed"):
        await make_session(db, bob, template, state=state)
    token = token_for(bob)
    # running counts; hibernated, terminated and failed do not: two more fit
    assert (await client.post("/api/v1/sessions", {"template": "terminal"}, token=token)
            ).status == 201
    assert (await client.post("/api/v1/sessions", {"template": "terminal"}, token=token)
            ).status == 201
    r = await client.post("/api/v1/sessions", {"template": "terminal"}, token=token)
    assert r.status == 409


@pytest_twisted.ensureDeferred
async def test_hibernate_wake_and_invalid_moves(client, db, ctx):
    lifecycle = RecordingLifecycle()
    ctx.extras["lifecycle"] = lifecycle
    alice = await make_user(db, "alice")
    template = await make_template(db)
    agent = await make_agent(db)
    await online(db, agent)
    sid = await make_session(db, alice, template, state="running", agent_uuid=agent)
    token = token_for(alice)
    path = f"/api/v1/sessions/{sid}"
    r = await client.patch(path, {"state": "hibernated"}, token=token)
    assert r.status == 200 and r.json["state"] == "hibernating"
    assert r.json["agent_id"] == "agent-1" and r.json["platform"] == "local"
    again = await client.patch(path, {"state": "hibernated"}, token=token)
    assert again.status == 200 and again.json["state"] == "hibernating"  # idempotent
    wake = await client.patch(path, {"state": "running"}, token=token)
    assert wake.status == 409 and wake.code == "invalid_state_transition"
    assert "hibernating" in wake.json["error"]["message"]
    await db.execute("UPDATE sessions SET state = 'hibernated' WHERE id = %s", (sid,))
    wake = await client.patch(path, {"state": "running"}, token=token)
    assert wake.status == 200 and wake.json["state"] == "waking"
    for body in ({"state": "terminated"}, {"state": 1}, {}, {"state": "running", "x": 1}):
        r = await client.patch(path, body, token=token)
        assert r.status == 400, body
    assert lifecycle.calls == [("session_changed", sid), ("session_changed", sid)]
    assert await count(db, "audit_log", "action = 'session.state_change'") == 2
    # each move queued its command, in the same transaction
    assert await commands(db, sid) == [("hibernate_session", "pending"),
                                       ("wake_session", "pending")]


@pytest_twisted.ensureDeferred
async def test_delete_paths(client, db, ctx):
    lifecycle = RecordingLifecycle()
    ctx.extras["lifecycle"] = lifecycle
    alice = await make_user(db, "alice")
    template = await make_template(db)
    agent = await make_agent(db)
    await online(db, agent)
    token = token_for(alice)
    pending = await make_session(db, alice, template, state="pending")
    running = await make_session(db, alice, template, state="running", agent_uuid=agent)

    r = await client.delete(f"/api/v1/sessions/{pending}", token=token)
    assert r.status == 202 and r.json["state"] == "terminated"  # never reached an agent
    r = await client.delete(f"/api/v1/sessions/{running}", token=token)
    assert r.status == 202 and r.json["state"] == "terminating"
    r = await client.delete(f"/api/v1/sessions/{running}", token=token)
    assert r.status == 202 and r.json["state"] == "terminating"  # already on its way
    await db.execute("UPDATE sessions SET state = 'terminated' WHERE id = %s", (running,))
    r = await client.delete(f"/api/v1/sessions/{running}", token=token)
    assert r.status == 204 and r.body == b""
    assert lifecycle.calls == [("session_changed", pending), ("session_changed", running)]
    # terminated sessions are hidden unless asked for
    assert (await client.get("/api/v1/sessions", token=token)).json == []
    shown = await client.get("/api/v1/sessions?include_terminated=true", token=token)
    assert len(shown.json) == 2
    shown = await client.get("/api/v1/sessions?state=terminated", token=token)
    assert len(shown.json) == 2
    assert await count(db, "audit_log", "action = 'session.delete'") == 2


@pytest_twisted.ensureDeferred
async def test_admin_filters(client, db):
    alice, bob = await make_user(db, "alice"), await make_user(db, "bob")
    admin = await make_user(db, "root", role="admin")
    template = await make_template(db)
    agent = await make_agent(db, "k8s-1", platform="kubernetes")
    a1 = await make_session(db, alice, template, state="running", agent_uuid=agent)
    await db.execute("UPDATE sessions SET platform = 'kubernetes' WHERE id = %s", (a1,))
    await make_session(db, alice, template, state="pending")
    b1 = await make_session(db, bob, template, state="hibernated")
    token = token_for(admin)

    async def ids(query):
        r = await client.get("/api/v1/sessions" + query, token=token)
        assert r.status == 200, r.body
        return sorted(s["id"] for s in r.json)

    assert len(await ids("")) == 3
    assert len(await ids("?user=alice")) == 2
    assert await ids("?user=bob") == [b1]
    assert await ids("?state=running") == [a1]
    assert await ids("?agent_id=k8s-1") == [a1]
    assert await ids("?platform=kubernetes") == [a1]
    assert await ids("?user=alice&state=hibernated") == []
    for bad in ("?state=sleeping", "?user=%00", "?include_terminated=maybe", "?user=A%20B",
                "?platform=%ff"):
        r = await client.get("/api/v1/sessions" + bad, token=token)
        assert r.status == 400, bad
    # a user's filters only ever narrow their own sessions
    r = await client.get("/api/v1/sessions?user=bob", token=token_for(alice))
    assert r.json == []


@pytest_twisted.ensureDeferred
async def test_deleting_a_session_of_an_offline_agent_ends_it_and_queues_the_stop(client, db):
    alice = await make_user(db, "alice")
    template = await make_template(db)
    agent = await make_agent(db)  # offline
    sid = await make_session(db, alice, template, state="unreachable", agent_uuid=agent)
    r = await client.delete(f"/api/v1/sessions/{sid}", token=token_for(alice))
    assert r.status == 202 and r.json["state"] == "terminated"
    assert await commands(db, sid) == [("stop_session", "pending")]


@pytest_twisted.ensureDeferred
async def test_three_wakes_at_once_with_a_limit_of_one_wake_one(client, db):
    """Issue 10 item 2: a wake counts against the owner's limit, atomically."""
    alice = await make_user(db, "alice", max_sessions=1)
    template = await make_template(db)
    agent = await make_agent(db)
    await online(db, agent)
    sids = [await make_session(db, alice, template, state="hibernated", agent_uuid=agent)
            for _ in range(3)]
    token = token_for(alice)
    results = await gather(*[client.patch(f"/api/v1/sessions/{sid}", {"state": "running"},
                                          token=token) for sid in sids])
    assert sorted(r.status for r in results) == [200, 409, 409]
    refused = [r for r in results if r.status == 409]
    assert {r.code for r in refused} == {"session_limit_reached"}
    assert sorted([await state_of(db, sid) for sid in sids]) == \
        ["hibernated", "hibernated", "waking"]
    # ...and a create counts the waking one too
    r = await client.post("/api/v1/sessions", {"template": "terminal"}, token=token)
    assert r.status == 409 and r.code == "session_limit_reached"


@pytest_twisted.ensureDeferred
async def test_a_wake_that_cannot_be_placed_leaves_the_session_hibernated(client, db):
    """Issue 10 item 2: a wake needs room on the session's own agent (its data is there);
    on a full or offline agent it is refused with the reason and changes nothing."""
    alice = await make_user(db, "alice")
    template = await make_template(db)
    agent = await make_agent(db)  # capacity {"max_sessions": 10}
    await online(db, agent)
    await db.execute("UPDATE agents SET capacity = '{\"max_sessions\": 1}' WHERE id = %s",
                     (agent,))
    bob = await make_user(db, "bob")
    await make_session(db, bob, template, state="running", agent_uuid=agent)
    sid = await make_session(db, alice, template, state="hibernated", agent_uuid=agent)
    token = token_for(alice)
    r = await client.patch(f"/api/v1/sessions/{sid}", {"state": "running"}, token=token)
    assert r.status == 409 and r.code == "cannot_wake"
    assert "stays hibernated" in r.json["error"]["message"]
    assert "agent-1 runs 1/1 sessions" in r.json["error"]["message"]
    await db.execute("UPDATE agents SET status = 'offline' WHERE id = %s", (agent,))
    r = await client.patch(f"/api/v1/sessions/{sid}", {"state": "running"}, token=token)
    assert r.status == 409 and "offline" in r.json["error"]["message"]
    assert await state_of(db, sid) == "hibernated"
    assert await commands(db, sid) == []
    assert await count(db, "audit_log", "action = 'session.state_change'") == 0


@pytest_twisted.ensureDeferred
async def test_restart_a_stopped_or_failed_session_on_its_own_agent(client, db, ctx):
    """Issue 10 item 12: Restart, same template, same agent (so the same home); it
    counts against the limit like a new session."""
    lifecycle = RecordingLifecycle()
    ctx.extras["lifecycle"] = lifecycle
    alice = await make_user(db, "alice", max_sessions=1)
    template = await make_template(db)
    agent = await make_agent(db)
    stopped = await make_session(db, alice, template, state="stopped", agent_uuid=agent)
    failed = await make_session(db, alice, template, state="failed", agent_uuid=agent)
    token = token_for(alice)
    r = await client.patch(f"/api/v1/sessions/{stopped}", {"state": "running"}, token=token)
    assert r.status == 200 and r.json["state"] == "pending"
    assert r.json["agent_id"] == "agent-1"  # kept: placement takes it to the same agent
    assert lifecycle.calls == [("session_changed", stopped)]
    r = await client.patch(f"/api/v1/sessions/{failed}", {"state": "running"}, token=token)
    assert r.status == 409 and r.code == "session_limit_reached"
    assert await state_of(db, failed) == "failed"
    assert await count(db, "audit_log", "action = 'session.restart' AND target_id = %s",
                       (stopped,)) == 1
    await db.execute("UPDATE templates SET enabled = false")
    await db.execute("UPDATE users SET max_sessions = 5")
    r = await client.patch(f"/api/v1/sessions/{failed}", {"state": "running"}, token=token)
    assert r.status == 400 and r.code == "unknown_template"


@pytest_twisted.ensureDeferred
async def test_a_move_and_its_command_commit_together_or_not_at_all(client, db):
    """Issue 10 item 5: when queueing the command fails, the state change and its audit
    row are rolled back with it (a crash between two transactions could leave a session
    `hibernating` with no command, stuck until it failed)."""
    client.allow_500 = True
    alice = await make_user(db, "alice")
    template = await make_template(db)
    agent = await make_agent(db)
    await online(db, agent)
    sid = await make_session(db, alice, template, state="running", agent_uuid=agent)
    await db.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'queue unavailable (injected)'; END $$")
    await db.execute("CREATE TRIGGER refuse BEFORE INSERT ON agent_commands "
                     "FOR EACH ROW EXECUTE FUNCTION refuse()")
    token = token_for(alice)
    r = await client.patch(f"/api/v1/sessions/{sid}", {"state": "hibernated"}, token=token)
    assert r.status == 500 and r.code == "internal_error"
    r = await client.delete(f"/api/v1/sessions/{sid}", token=token)
    assert r.status == 500
    assert await state_of(db, sid) == "running"
    assert await count(db, "session_events", "session_id = %s", (sid,)) == 0
    assert await count(db, "audit_log") == 0
    await db.execute("DROP TRIGGER refuse ON agent_commands")
    r = await client.patch(f"/api/v1/sessions/{sid}", {"state": "hibernated"}, token=token)
    assert r.status == 200 and await commands(db, sid) == [("hibernate_session", "pending")]
