"""Property (issue 9, item 9): whatever one frame an agent sends, the hub answers it
cleanly: the frame is handled, or the connection is closed with 4000 and a reason (a
protocol error). Never an unhandled error, never a 4011 (our bug), never a wedged
connection, and the other agents are served throughout.

Hypothesis drives examples from a worker thread; each runs on the reactor against a real
hub, real WebSockets and a real PostgreSQL (blockingCallFromThread), as the REST fuzz
does (tests/integration/api/test_fuzz.py)."""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.logger import globalLogPublisher

from streamspace_common.wire import AGENT_TO_SERVER
from tests.support.http import poll
from tests.support.hub_agents import agent_status, make_agent, processed, registered_client
from tests.support.wsclient import connect

EXAMPLES = int(os.environ.get("STREAMSPACE_FUZZ_EXAMPLES", "60"))
SID = "6b1f3b7e-9a52-4f0c-9d8e-2b1d3c4e5f60"

NASTY_TEXT = st.sampled_from(["", "x", "\x00", "a\x00b", "\ud800", "\udfff x", "\u2603",
                              SID, "not-a-uuid", "running", "hibernated", "stopped",
                              "failed", "asleep"]) | st.integers(500, 700).map(lambda n: "a" * n)
NUMBERS = (st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, -1, 2 ** 53, 2 ** 53 + 1, 10 ** 30, 1e308, 0.5]))
LEAVES = st.none() | st.booleans() | NUMBERS | st.text(max_size=12) | NASTY_TEXT
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8) | NASTY_TEXT, inner, max_size=3),
                    max_leaves=10)
FIELDS = sorted({f for fields in AGENT_TO_SERVER.values() for f in fields}
                | {"result", "reason", "extra"})
SESSION_ITEM = st.fixed_dictionaries({"session_id": NASTY_TEXT | JSON},
                                     optional={"state": NASTY_TEXT | JSON,
                                               "reason": NASTY_TEXT | JSON})


def payloads():
    value = JSON | NASTY_TEXT | st.lists(SESSION_ITEM, max_size=3) \
        | st.fixed_dictionaries({}, optional={"sessions": NUMBERS | NASTY_TEXT,
                                              "cpu": NUMBERS, "memory_gb": NUMBERS})
    return st.dictionaries(st.sampled_from(FIELDS), value, max_size=5)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


FRAMES = st.one_of(
    st.builds(lambda t, i, ts, p: json.dumps({"type": t, "id": i, "timestamp": ts,
                                              "payload": p}).encode(),
              st.sampled_from(sorted(AGENT_TO_SERVER)) | NASTY_TEXT, NASTY_TEXT | JSON,
              NASTY_TEXT | JSON, payloads() | JSON),
    st.builds(lambda t, p: json.dumps({"type": t, "id": "f", "timestamp": "t",
                                       "payload": p}).encode(),
              st.sampled_from(sorted(AGENT_TO_SERVER)), payloads()),
    st.integers(min_value=1, max_value=20000).map(
        lambda d: ('{"type": "heartbeat", "id": "f", "timestamp": "t", "payload": '
                   '{"usage": {}, "sessions": [], "x": ' + deep(d) + "}}").encode()),
    st.binary(max_size=64),
    JSON.map(lambda v: json.dumps(v).encode()),
)


def block_on(coro):
    return threads.blockingCallFromThread(reactor, lambda: defer.Deferred.fromCoroutine(coro))


# Hypothesis warns when the global `random` changes while it draws: here the reactor
# thread (other connections, the sweeps) runs alongside the drawing worker thread.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_any_frame_is_handled_or_refused_cleanly(hub_server):
    base, fleet, db = hub_server
    _, token = await make_agent(db, "fuzzed")
    _, bystander_token = await make_agent(db, "bystander")
    bystander = await registered_client(base, "bystander", bystander_token)
    failures = []

    def observe(event):
        if "log_failure" in event or event.get("log_level") is not None and \
                event["log_level"].name in ("error", "critical"):
            failures.append(event)

    globalLogPublisher.addObserver(observe)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(frame=FRAMES)
    def run(frame):
        async def attempt():
            client = await connect(f"ws://{base}/api/v1/agent/connect?agent_id=fuzzed",
                                   headers={"Authorization": f"Bearer {token}"})
            client.frame("register", {"agent_id": "fuzzed", "platform": "local",
                                      "region": "", "protocol_version": 1, "capacity": {},
                                      "sessions": [], "metadata": {}})
            await client.next_of_type("registered")
            _, before = await agent_status(db, "fuzzed")
            client.send_raw(frame)
            client.frame("heartbeat", {"usage": {}, "sessions": []})

            async def settled():
                if client.closed.called:
                    return "closed"
                return "handled" if (await agent_status(db, "fuzzed"))[1] > before else None

            if await poll(settled, interval=0.02, what="the frame to be handled") == "closed":
                code, reason = client.closed.result
                assert code == 4000 and reason, (frame[:200], code, reason)
            else:  # handled, and the connection lives on
                client.close()
                await client.wait_closed()
            assert not failures, (frame[:200], failures[0].get("log_format"))

        block_on(attempt())

    try:
        await threads.deferToThread(run)
    finally:
        globalLogPublisher.removeObserver(observe)
    await processed(db, bystander, "bystander")
    assert not bystander.closed.called
    bystander.close()
