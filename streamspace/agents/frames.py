"""Control-channel frames (docs/protocol.md): one JSON object per text frame.

Decoding validates everything an agent can get wrong, so the hub can cut off a peer that
sends garbage with a precise reason instead of failing somewhere deeper.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024

# type -> payload fields that must be present (from the agent)
AGENT_FRAMES: dict[str, tuple[str, ...]] = {
    "register": ("agent_id", "platform", "protocol_version"),
    "heartbeat": (),
    "ack": ("command_id",),
    "complete": ("command_id",),
    "failed": ("command_id", "reason"),
    "session_status": ("session_id", "state"),
}


class ProtocolError(Exception):
    """The peer broke the protocol; the message is the close reason."""


@dataclass(frozen=True)
class Frame:
    type: str
    id: str
    timestamp: str
    payload: dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode(frame_type: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"type": frame_type, "id": str(uuid.uuid4()), "timestamp": now_iso(),
                       "payload": payload}, default=str).encode()


def decode(data: bytes, is_binary: bool, expected: dict[str, tuple[str, ...]] = AGENT_FRAMES
           ) -> Frame:
    if is_binary:
        raise ProtocolError("binary frame on the control channel")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    frame_type = obj.get("type")
    if frame_type not in expected:
        raise ProtocolError(f"unknown frame type {str(frame_type)[:40]!r}")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise ProtocolError(f"{frame_type}: payload must be an object")
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        raise ProtocolError(f"{frame_type}: missing frame id")
    missing = [f for f in expected[frame_type] if f not in payload]
    if missing:
        raise ProtocolError(f"{frame_type}: missing {', '.join(missing)}")
    return Frame(frame_type, obj["id"], str(obj.get("timestamp", "")), payload)
