"""Audit: rows commit with their change and vanish with its rollback; filters and paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest_twisted

from streamspace.db import audit as audit_db
from tests.integration.api.support import PASSWORD, count, make_template, make_user, token_for


def _explode_after_audit(monkeypatch):
    real = audit_db.record

    async def record_then_fail(cursor, **kwargs):
        await real(cursor, **kwargs)
        raise RuntimeError("simulated failure after the audit row was written")

    monkeypatch.setattr(audit_db, "record", record_then_fail)


@pytest_twisted.ensureDeferred
async def test_failed_change_leaves_neither_row_nor_audit(client, db, monkeypatch):
    alice = await make_user(db, "alice")
    admin = await make_user(db, "root", role="admin")
    await make_template(db)
    _explode_after_audit(monkeypatch)
    client.allow_500 = True
    r = await client.post("/api/v1/sessions", {"template": "terminal"}, token=token_for(alice))
    assert r.status == 500 and r.json == {"error": {"code": "internal_error",
                                                    "message": "internal error"}}
    assert b"Traceback" not in r.body and b"simulated" not in r.body
    r = await client.post("/api/v1/users", {"username": "zed", "password": PASSWORD},
                          token=token_for(admin))
    assert r.status == 500
    r = await client.post("/api/v1/agents", {"agent_id": "a1", "platform": "local"},
                          token=token_for(admin))
    assert r.status == 500
    assert await count(db, "sessions") == 0
    assert await count(db, "session_events") == 0
    assert await count(db, "users", "username = 'zed'") == 0
    assert await count(db, "agents") == 0
    assert await count(db, "audit_log") == 0


@pytest_twisted.ensureDeferred
async def test_search_filters_and_paging(client, db):
    admin = await make_user(db, "root", role="admin")
    alice = await make_user(db, "alice")
    at = token_for(admin)
    await make_template(db)
    for _ in range(3):
        await client.post("/api/v1/sessions", {"template": "terminal"}, token=token_for(alice))
    await client.post("/api/v1/auth/login", {"username": "alice", "password": "wrong"})
    await client.post("/api/v1/auth/login", {"username": "alice", "password": PASSWORD})

    async def entries(query):
        r = await client.get("/api/v1/audit" + query, token=at)
        assert r.status == 200, r.body
        return r.json

    everything = (await entries(""))["entries"]
    assert [e["action"] for e in everything] == ["auth.login", "auth.login"] + \
        ["session.create"] * 3  # newest first
    assert everything[0]["success"] and not everything[1]["success"]
    assert everything[-1]["actor_name"] == "alice" and everything[-1]["actor_id"] == alice["id"]
    assert everything[-1]["client_addr"] == "127.0.0.1"
    assert len((await entries("?action=session.create"))["entries"]) == 3
    assert len((await entries("?action=session.*"))["entries"]) == 3
    assert len((await entries("?action=auth.login&success=false"))["entries"]) == 1
    assert len((await entries("?actor=alice"))["entries"]) == 5
    assert len((await entries(f"?actor_id={alice['id']}"))["entries"]) == 4
    assert len((await entries("?target_type=session"))["entries"]) == 3
    hour_ago = quote((datetime.now(UTC) - timedelta(hours=1)).isoformat())
    assert len((await entries(f"?since={hour_ago}"))["entries"]) == 5
    assert (await entries(f"?until={hour_ago}"))["entries"] == []
    assert len((await entries("?since=2020-01-01T00:00:00Z"))["entries"]) == 5

    page1 = await entries("?limit=2")
    assert len(page1["entries"]) == 2 and page1["next_cursor"]
    page2 = await entries(f"?limit=2&cursor={page1['next_cursor']}")
    page3 = await entries(f"?limit=2&cursor={page2['next_cursor']}")
    assert page3["next_cursor"] is None
    ids = [e["id"] for p in (page1, page2, page3) for e in p["entries"]]
    assert ids == [e["id"] for e in everything]
    assert [e["id"] for e in (await entries("?limit=2&offset=2"))["entries"]] == ids[2:4]

    for bad in ("?limit=0", "?limit=501", "?limit=x", "?cursor=abc", "?since=yesterday",
                "?actor_id=nope", "?success=perhaps", "?action=DROP%20TABLE"):
        r = await client.get("/api/v1/audit" + bad, token=at)
        assert r.status == 400, bad
    assert (await client.get("/api/v1/audit", token=token_for(alice))).status == 403


@pytest_twisted.ensureDeferred
async def test_odd_cursors_and_time_zone_offsets_are_400s_not_500s(client, db):
    """Issue 9 item 9: `cursor=²` and offsets that PostgreSQL refuses or that carry a
    time out of range once applied answered 500."""
    at = token_for(await make_user(db, "root", role="admin"))
    for query in ("cursor=" + quote("²"), "cursor=" + quote("١٢"), "limit=" + quote("١٢"),
                  "since=" + quote("9999-12-31T23:59:59-23:59"),
                  "until=" + quote("1970-01-01T00:00:00+23:00")):
        r = await client.get("/api/v1/audit?" + query, token=at)
        assert r.status == 400 and r.code == "invalid_request", (query, r.body)
    # an offset with seconds is a valid ISO 8601 time: answered, in UTC
    r = await client.get("/api/v1/audit?since=" + quote("2026-01-01T00:00:00+05:30:15.5"),
                         token=at)
    assert r.status == 200, r.body
