"""Control-channel frames (docs/protocol.md): encode, decode and validate.

One codec for both ends: the agent (agent/channel.py) and the control plane's hub
(streamspace/agents/) speak the protocol through this module only.

Everything that knows the JSON shape of a frame lives here, so the channel logic works on
validated `Frame` objects and a malformed frame is one `ProtocolError` with a reason that
can go straight into a 4000 close.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024

# Close codes (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 4000
CLOSE_UNAUTHORIZED = 4001
CLOSE_REPLACED = 4002  # a newer connection for the same agent id took over
CLOSE_HEARTBEAT_TIMEOUT = 4003
# The control plane could not process a frame (its bug, not the agent's): the agent
# reconnects, and what it had sent is asked again through redelivery. (1011 is what RFC
# 6455 names for this, but WebSocket libraries such as autobahn let applications send
# only 1000 and 3000-4999, the rest being the protocol's own.)
CLOSE_INTERNAL_ERROR = 4011

# Limits on what a received frame may contain (it is JSON from a peer).
MAX_DEPTH = 32  # nesting of objects and arrays, the frame itself included
MAX_INTEGER = 2 ** 53  # larger integers lose precision in JSON readers: refused

# Required payload fields per frame type, both directions.
AGENT_TO_SERVER: dict[str, tuple[str, ...]] = {
    "register": ("agent_id", "platform", "region", "protocol_version", "capacity",
                 "sessions", "metadata"),
    "heartbeat": ("usage", "sessions"),
    "ack": ("command_id",),
    "complete": ("command_id", "result"),
    "failed": ("command_id", "reason"),
    "session_status": ("session_id", "state", "reason"),
    "session_progress": ("session_id", "message"),
}
SERVER_TO_AGENT: dict[str, tuple[str, ...]] = {
    "registered": ("agent_id", "heartbeat_interval", "server_time"),
    "command": ("command_id", "command_type", "session_id", "data", "deadline"),
}

COMMAND_TYPES = ("start_session", "stop_session", "hibernate_session", "wake_session",
                 "list_sessions", "vnc_connect", "vnc_disconnect")
# Session states an agent reports (register, heartbeat, session_status).
SESSION_STATES = ("starting", "running", "hibernated", "stopped", "failed")


class ProtocolError(ValueError):
    """A frame that breaks docs/protocol.md; `str(e)` is the close reason."""


@dataclass(frozen=True)
class Frame:
    type: str
    id: str
    timestamp: str
    payload: dict[str, Any]


def iso_utc(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, the protocol's timestamp form."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """Seconds since the epoch from an ISO 8601 timestamp (naive means UTC)."""
    try:
        moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"{text!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def encode(frame_type: str, payload: dict[str, Any], now: float,
           frame_id: str | None = None) -> bytes:
    """One frame as UTF-8 JSON; raises `ProtocolError` if it would pass the 64 KiB cap."""
    _check_payload(frame_type, payload, AGENT_TO_SERVER | SERVER_TO_AGENT)
    data = json.dumps({
        "type": frame_type,
        "id": frame_id or str(uuid.uuid4()),
        "timestamp": iso_utc(now),
        "payload": payload,
    }, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{frame_type} frame is {len(data)} bytes, over the 64 KiB cap")
    return data


def decode(data: bytes | str, known: dict[str, tuple[str, ...]] = SERVER_TO_AGENT) -> Frame:
    """Parse and validate one received frame against the types in `known`."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes is over the 64 KiB cap")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")  # a text frame is UTF-8 (json.loads would guess)
        except UnicodeDecodeError:
            raise ProtocolError("frame is not valid UTF-8") from None
    try:
        obj = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float,
                         parse_int=_bounded_int)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("frame is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("frame is not valid JSON") from None
    _check_values(obj)
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    for field in ("type", "id", "timestamp", "payload"):
        if field not in obj:
            raise ProtocolError(f"frame has no {field!r}")
    frame_type, frame_id, timestamp, payload = (
        obj["type"], obj["id"], obj["timestamp"], obj["payload"])
    if not isinstance(frame_type, str) or not isinstance(frame_id, str) or not frame_id:
        raise ProtocolError("frame 'type' and 'id' must be non-empty strings")
    if not isinstance(timestamp, str):
        raise ProtocolError("frame 'timestamp' must be an ISO 8601 string")
    if not isinstance(payload, dict):
        raise ProtocolError(f"{frame_type} payload must be a JSON object")
    if frame_type not in known:
        raise ProtocolError(f"unknown frame type {frame_type!r}")
    _check_payload(frame_type, payload, known)
    return Frame(frame_type, frame_id, timestamp, payload)


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"frame contains {name}, which JSON does not allow")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"frame contains a number out of range ({text[:20]})")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise ProtocolError(f"frame contains a number out of range ({text[:20]}...)")
    value = int(text)
    if abs(value) > MAX_INTEGER:
        raise ProtocolError(f"frame contains a number out of range ({text})")
    return value


def _check_values(obj: Any) -> None:
    """Nesting at most MAX_DEPTH; every string (keys too) free of NUL and of lone
    surrogates, which no database or UTF-8 encoder accepts."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ProtocolError(f"frame is nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if "\0" in text:
        raise ProtocolError("frame contains a NUL character in a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("frame contains a string that is not valid Unicode") from None


def _check_payload(frame_type: str, payload: dict[str, Any],
                   known: dict[str, tuple[str, ...]]) -> None:
    if frame_type not in known:
        raise ProtocolError(f"unknown frame type {frame_type!r}")
    missing = [f for f in known[frame_type] if f not in payload]
    if missing:
        raise ProtocolError(f"{frame_type} payload has no {', '.join(map(repr, missing))}")
