"""Control-channel frames: the shape docs/protocol.md gives them, and every way to break it."""

import json

import pytest

from streamspace_common.wire import (
    AGENT_TO_SERVER,
    MAX_FRAME_BYTES,
    ProtocolError,
    decode,
    encode,
    iso_utc,
    parse_iso,
)

NOW = 1_795_000_000.25


def frame(**overrides):
    base = {"type": "registered", "id": "f1", "timestamp": "2026-11-23T13:00:00Z",
            "payload": {"agent_id": "a", "heartbeat_interval": 10,
                        "server_time": "2026-11-23T13:00:00Z"}}
    base.update(overrides)
    return json.dumps(base)


def test_encode_has_every_field_and_round_trips():
    data = encode("ack", {"command_id": "c1"}, NOW)
    obj = json.loads(data)
    assert set(obj) == {"type", "id", "timestamp", "payload"}
    assert obj["timestamp"] == iso_utc(NOW) and obj["timestamp"].endswith("Z")
    assert parse_iso(obj["timestamp"]) == pytest.approx(NOW, abs=0.001)
    again = decode(data, AGENT_TO_SERVER)
    assert (again.type, again.payload) == ("ack", {"command_id": "c1"})
    # ids are unique per frame
    assert json.loads(encode("ack", {"command_id": "c1"}, NOW))["id"] != obj["id"]


def test_encode_refuses_missing_fields_and_oversize_frames():
    with pytest.raises(ProtocolError, match="complete payload has no 'result'"):
        encode("complete", {"command_id": "c1"}, NOW)
    with pytest.raises(ProtocolError, match="64 KiB"):
        encode("failed", {"command_id": "c", "reason": "x" * MAX_FRAME_BYTES}, NOW)
    with pytest.raises(ProtocolError, match="unknown frame type"):
        encode("hello", {}, NOW)


def test_decode_accepts_a_valid_frame():
    f = decode(frame())
    assert f.type == "registered" and f.payload["heartbeat_interval"] == 10


@pytest.mark.parametrize("data, reason", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"type": "registered", "id": "x", "payload": {}}), "no 'timestamp'"),
    (frame(type="bogus"), "unknown frame type 'bogus'"),
    (frame(payload=[]), "payload must be a JSON object"),
    (frame(id=""), "non-empty strings"),
    (frame(payload={"agent_id": "a"}), "registered payload has no"),
    (frame(type="command", payload={"command_id": "c"}), "command payload has no"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b" " * (MAX_FRAME_BYTES + 1), "over the 64 KiB cap"),
])
def test_decode_rejects_with_a_reason(data, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(data)


def test_agent_frames_are_not_accepted_from_the_control_plane():
    with pytest.raises(ProtocolError, match="unknown frame type 'heartbeat'"):
        decode(encode("heartbeat", {"usage": {}, "sessions": []}, NOW))


def test_timestamps_parse_in_the_forms_a_control_plane_may_send():
    assert parse_iso("2026-11-23T13:00:00Z") == parse_iso("2026-11-23T13:00:00+00:00")
    assert parse_iso("2026-11-23 13:00:00.5+00:00") == parse_iso("2026-11-23T13:00:00.5Z")
    assert parse_iso("2026-11-23T13:00:00") == parse_iso("2026-11-23T13:00:00Z")  # naive=UTC
    assert parse_iso("2026-11-23T14:00:00+01:00") == parse_iso("2026-11-23T13:00:00Z")
    with pytest.raises(ProtocolError):
        parse_iso("yesterday")
