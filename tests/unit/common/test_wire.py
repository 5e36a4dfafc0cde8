"""wire.decode refuses what no reader or database should be handed, with a reason that
can go straight into a 4000 close (issue 9, item 9)."""

import json

import pytest

from streamspace_common.wire import AGENT_TO_SERVER, MAX_DEPTH, ProtocolError, decode


def heartbeat(usage: str) -> bytes:
    return ('{"type": "heartbeat", "id": "f", "timestamp": "t", "payload": '
            '{"sessions": [], "usage": ' + usage + "}}").encode()


@pytest.mark.parametrize("data, reason", [
    (heartbeat('{"cpu": NaN}'), "NaN"),
    (heartbeat('{"cpu": -Infinity}'), "-Infinity"),
    (heartbeat('{"cpu": 1e400}'), "out of range"),
    (heartbeat('{"cpu": ' + "9" * 30 + "}"), "out of range"),
    (heartbeat('{"cpu": 9007199254740993}'), "out of range"),
    (heartbeat('{"cpu": "\\u0000"}'), "NUL"),
    (heartbeat('{"\\u0000": 1}'), "NUL"),
    (heartbeat('{"cpu": "\\ud800"}'), "not valid Unicode"),
    (heartbeat("[" * 20000 + "]" * 20000), "nested too deeply"),
    (heartbeat('{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH), f"deeper than {MAX_DEPTH}"),
    (b'{"type": "ack", "id": "f", "timestamp": "t", "payload": {"command_id": "\xc3("}}',
     "not valid UTF-8"),
])
def test_refused_with_a_reason(data, reason):
    with pytest.raises(ProtocolError, match=reason.replace("(", r"\(")):
        decode(data, AGENT_TO_SERVER)


def test_what_a_real_agent_sends_still_decodes():
    data = heartbeat('{"sessions": 2, "cpu": 1.5, "memory_gb": 2.0, "unicode": "\\u2603"}')
    frame = decode(data, AGENT_TO_SERVER)
    assert frame.payload["usage"]["cpu"] == 1.5 and frame.payload["usage"]["sessions"] == 2
    nested = {"a": 1}
    for _ in range(MAX_DEPTH - 4):
        nested = {"n": nested}
    ok = json.dumps({"type": "complete", "id": "f", "timestamp": "t",
                     "payload": {"command_id": "c", "result": nested}})
    assert decode(ok, AGENT_TO_SERVER).type == "complete"
