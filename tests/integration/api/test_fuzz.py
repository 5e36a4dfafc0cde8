"""Property: whatever body a client sends to a write route, the answer is never a 5xx,
always JSON in the one error shape when it fails, and a refused request changes nothing."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import quote_from_bytes

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads

from streamspace.api import agents, auth_routes, sessions, templates, users
from streamspace.api.app import ROUTES
from streamspace.api.body import Field
from streamspace.api.openapi import document
from tests.integration.api.support import (
    PASSWORD,
    make_agent,
    make_session,
    make_template,
    make_user,
    token_for,
)

FIELDS = {
    "auth.login": auth_routes.LOGIN_FIELDS, "auth.password": auth_routes.PASSWORD_FIELDS,
    "users.create": users.CREATE_FIELDS, "users.update": users.UPDATE_FIELDS,
    "templates.create": templates.CREATE_FIELDS, "templates.update": templates.UPDATE_FIELDS,
    "sessions.create": sessions.CREATE_FIELDS, "sessions.update": sessions.UPDATE_FIELDS,
    "agents.create": agents.CREATE_FIELDS, "agents.register": agents.REGISTER_FIELDS,
}
WRITES = sorted(endpoint for method, _, _, endpoint in ROUTES if method != "GET")
# Routes whose refusals are themselves audited (failed logins, wrong tokens).
AUDITS_FAILURES = {"auth.login", "auth.password", "agents.register"}

PLAUSIBLE = st.sampled_from([
    "terminal", "running", "hibernated", "terminated", "local", "kubernetes", "admin", "user",
    "owner", "root", PASSWORD, "agent-1", "", " ", "a" * 300, "\u2603", "-", "x" * 64,
    {"image": "x"}, {"local": {"command": "xterm"}}, {"kubernetes": {}}, {"A": "b"},
])
LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
          | PLAUSIBLE)
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def valid(field: Field):
    """Values the field accepts (mostly), so examples also reach the database code."""
    if field.kind == "string":
        if field.choices:
            base = st.sampled_from(field.choices)
        elif field.pattern:
            base = st.from_regex(field.pattern, fullmatch=True)
        else:
            base = st.text(min_size=field.min_len or 0, max_size=min(field.max_len or 40, 40))
    elif field.kind == "integer":
        base = st.integers(min_value=int(field.min if field.min is not None else -(2**31)),
                           max_value=int(field.max if field.max is not None else 2**31))
    elif field.kind == "number":
        lo, hi = field.min or 0, field.max or 1e6
        base = st.floats(min_value=lo, max_value=hi) | st.integers(int(lo) + 1, int(hi))
    elif field.kind == "boolean":
        base = st.booleans()
    elif field.kind == "string_map":
        base = st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True),
                               st.text(max_size=10), max_size=3)
    elif field.custom is agents.check_capacity:
        base = st.fixed_dictionaries({}, optional={
            "max_sessions": st.integers(0, 50), "max_cpu": st.floats(0, 64),
            "max_memory_gb": st.floats(0, 256)})
    elif field.custom is not None:  # platforms
        base = st.dictionaries(
            st.sampled_from(["local", "kubernetes", "docker", "Bad"]),
            st.fixed_dictionaries({}, optional={"image": st.text(max_size=8),
                                                "command": st.text(max_size=8)}), max_size=3)
    else:
        base = st.dictionaries(st.text(max_size=8), JSON, max_size=3)
    return base | st.none() if field.nullable else base


# Values that name things the world has, so more examples get past the lookups.
KNOWN = {
    "sessions.create": {"template": st.sampled_from(["terminal", "spare", "nope"]),
                        "user": st.sampled_from(["owner", "victim", "ghost"])},
    "auth.login": {"username": st.sampled_from(["owner", "root", "ghost"]),
                   "password": st.sampled_from([PASSWORD, "wrong"])},
    "auth.password": {"current_password": st.sampled_from([PASSWORD, "wrong"])},
    "agents.register": {"agent_id": st.sampled_from(["agent-1", "ghost"])},
}


def bodies(endpoint: str):
    fields = FIELDS.get(endpoint, {})
    known = KNOWN.get(endpoint, {})
    names = sorted(fields) + ["unknown", "id"]
    junk = st.dictionaries(st.sampled_from(names), JSON | PLAUSIBLE, max_size=len(names))

    def ok(name, field):
        return known[name] | valid(field) if name in known else valid(field)

    good = st.fixed_dictionaries(
        {n: ok(n, f) for n, f in fields.items() if f.required},
        optional={n: ok(n, f) for n, f in fields.items() if not f.required})
    spoiled = st.fixed_dictionaries(
        {n: ok(n, f) | JSON for n, f in fields.items() if f.required},
        optional={n: ok(n, f) | JSON for n, f in fields.items() if not f.required})
    return st.one_of(good, good, spoiled, junk, JSON, st.binary(max_size=40))


# 30 per route keeps the suite fast; raise it for a deeper hunt.
EXAMPLES = int(os.environ.get("STREAMSPACE_FUZZ_EXAMPLES", "30"))

FINGERPRINT = """SELECT
  (SELECT count(*) FROM users), (SELECT max(updated_at) FROM users),
  (SELECT string_agg(password_hash, ',' ORDER BY id) FROM users),
  (SELECT count(*) FROM templates), (SELECT max(updated_at) FROM templates),
  (SELECT count(*) FROM sessions), (SELECT max(updated_at) FROM sessions),
  (SELECT count(*) FROM agents), (SELECT max(updated_at) FROM agents),
  (SELECT count(*) FROM session_events), (SELECT count(*) FROM revoked_tokens),
  (SELECT count(*) FROM audit_log)"""


def block(coro):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


@pytest.fixture
def world(client, db):
    async def build():
        admin = await make_user(db, "root", role="admin")
        await make_user(db, "admin2", role="admin")
        owner = await make_user(db, "owner", max_sessions=1000)
        victim = await make_user(db, "victim")
        template = await make_template(db)
        await make_template(db, name="spare")
        agent_uuid = await make_agent(db, "agent-1")
        sid = await make_session(db, owner, template, state="running", agent_uuid=agent_uuid)
        return {"admin": admin, "owner": owner, "paths": {
            "user_id": victim["id"], "name": "spare", "session_id": sid,
            "agent_id": "agent-1"}}

    return block(build())


def _path(template: str, params: dict) -> str:
    out = "/api/v1" + template
    for key, value in params.items():
        out = out.replace(f"<{key}>", value)
    return out


@pytest.mark.parametrize("endpoint", WRITES)
@pytest_twisted.ensureDeferred
async def test_no_body_makes_a_5xx(endpoint, client, db, world):
    """Hypothesis drives examples from a worker thread; each request runs on the reactor
    (blockingCallFromThread), so the reactor is never blocked."""
    method, template = next((m, p) for m, p, _, e in ROUTES if e == endpoint)
    path = _path(template, world["paths"])
    who = world["owner"] if endpoint.startswith("sessions.") else world["admin"]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(payload=bodies(endpoint))
    def run(payload):
        async def attempt():
            before = (await db.query(FINGERPRINT))[0]
            if isinstance(payload, bytes):
                r = await client.request(method, path, raw=payload, token=token_for(who),
                                         headers={"Content-Type": "application/json"})
            else:
                r = await client.request(method, path, json_body=payload,
                                         token=token_for(who))
            # (the client already asserted: no 5xx, JSON error shape, matches OpenAPI)
            if 400 <= r.status < 500:
                after = (await db.query(FINGERPRINT))[0]
                if endpoint in AUDITS_FAILURES:
                    before, after = before[:-1], after[:-1]
                assert before == after, (endpoint, payload, r.status, r.body)

        threads.blockingCallFromThread(reactor, lambda: defer.Deferred.fromCoroutine(attempt()))

    await threads.deferToThread(run)


# --- query strings of every GET route --------------------------------------------------

GETS = sorted(endpoint for method, _, _, endpoint in ROUTES if method == "GET")
_DOC = document()


def _query_names(template: str) -> list[str]:
    op = _DOC["paths"][re.sub(r"<([^>]+)>", r"{\1}", template)]["get"]
    return [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]


OFFSETS = st.builds(lambda h, m, s, us, sign: timezone(sign * timedelta(
    hours=h, minutes=m, seconds=s, microseconds=us)),
    st.integers(0, 23), st.integers(0, 59), st.sampled_from([0, 0, 1, 59]),
    st.sampled_from([0, 0, 1, 999999]), st.sampled_from([1, -1]))
TIMES = st.builds(lambda when, tz, sep: when.replace(tzinfo=tz).isoformat(sep=sep),
                  st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
                  OFFSETS | st.none(), st.sampled_from(["T", " "]))
TRICKY = st.sampled_from([
    "²", "١٢٣", "𝟗", "Ⅻ", "-1", "+1", "1e9", " 1", "1 ", "0x10", "9" * 19, "9" * 40, "",
    "true", "TRUE", "null", "*", "session.*", "%", "_", "\\", "'", "\"", "a" * 2000,
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-02-30", "2026-01-01T25:00",
    "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00Z", "2026-01-01 00:00:00 05:30",
    "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-00000000000G",
])
# digits of every script (`²`, `١`, `𝟗`): str.isdigit() and \\d take them, int() may not
DIGITS = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=4)
QUERY_VALUES = st.one_of(TRICKY, TIMES, DIGITS, st.text(max_size=24), st.binary(max_size=24),
                         st.integers(-(2**70), 2**70).map(str))


def _encode(value) -> str:
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return quote_from_bytes(raw, safe="")


def queries(endpoint: str):
    """The route's documented parameters (each present about half the time, so several
    odd values meet in one request), plus parameters nobody documented."""
    template = next(p for m, p, _, e in ROUTES if e == endpoint and m == "GET")
    known = st.fixed_dictionaries({}, optional={n: QUERY_VALUES
                                                for n in _query_names(template)})
    junk_keys = st.sampled_from(["cursor", "limit", "x", "", "since"]) | st.text(max_size=6)
    junk = st.lists(st.tuples(junk_keys, QUERY_VALUES), max_size=2)
    return st.builds(lambda k, j: [*k.items(), *j], known, junk)


@pytest.mark.parametrize("endpoint", GETS)
@pytest_twisted.ensureDeferred
async def test_no_query_string_makes_a_5xx(endpoint, client, db, world):
    """Issue 9 item 9: whatever query a client sends to a GET route (time zones with
    seconds, digits of other scripts such as `cursor=²`, invalid UTF-8, huge numbers),
    the answer is never a 5xx and is in the documented shape."""
    template = next(p for m, p, _, e in ROUTES if e == endpoint and m == "GET")
    path = _path(template, world["paths"])
    who = world["owner"] if endpoint.startswith("sessions.") else world["admin"]

    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(query=queries(endpoint))
    def run(query):
        qs = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in query)

        async def attempt():
            await client.get(path + ("?" + qs if qs else ""), token=token_for(who))

        threads.blockingCallFromThread(reactor, lambda: defer.Deferred.fromCoroutine(attempt()))

    await threads.deferToThread(run)
