"""The meaning of what agents send, checked before anything reaches the database.

`wire.decode` guarantees the frame's shape (fields present, JSON that any database can
store); this module checks each value the hub uses: ids are UUIDs, states are known,
numbers are numbers within range (`parse_capacity`), strings fit their columns. A bad
value is a `ProtocolError`: that one agent is closed with 4000 and the reason, and no
other agent, the scheduler or the sweeps ever see it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from streamspace_common import wire
from streamspace_common.capacity import parse_capacity

REPORTED_STATES = ("starting", "running", "hibernated")
STATUS_STATES = ("running", "stopped", "failed")
MAX_REASON = 500
MAX_SESSIONS_LISTED = 10_000


@dataclass(frozen=True)
class Registration:
    platform: str
    region: str
    capacity: dict
    metadata: dict
    protocol_version: int
    sessions: dict[str, str]  # session id -> reported state


def uuid_of(value: Any, what: str = "id") -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise wire.ProtocolError(f"{what} is not a valid id: {str(value)[:40]!r}") from None


def text(value: Any, what: str, max_len: int, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise wire.ProtocolError(f"{what} must be a string")
    if required and not value:
        raise wire.ProtocolError(f"{what} must not be empty")
    if len(value) > max_len:
        raise wire.ProtocolError(f"{what} is longer than {max_len} characters")
    return value


def reason(value: Any) -> str:
    """A sentence for users; cut, not refused, when long."""
    return text(value if isinstance(value, str) else (str(value) if value is not None else ""),
                "reason", 10 ** 6)[:MAX_REASON]


def sessions_list(value: Any) -> dict[str, str]:
    if not isinstance(value, list):
        raise wire.ProtocolError("sessions must be a list")
    if len(value) > MAX_SESSIONS_LISTED:
        raise wire.ProtocolError(f"sessions lists more than {MAX_SESSIONS_LISTED} entries")
    found: dict[str, str] = {}
    for item in value:
        if not isinstance(item, dict):
            raise wire.ProtocolError("each sessions entry must be an object")
        sid = uuid_of(item.get("session_id"), "sessions[].session_id")
        state = item.get("state")
        if state not in REPORTED_STATES:
            raise wire.ProtocolError(f"sessions[].state must be one of "
                                     f"{', '.join(REPORTED_STATES)}, not {str(state)[:20]!r}")
        found[sid] = state
    return found


def registration(payload: dict, agent_id: str) -> Registration:
    if payload.get("agent_id") != agent_id:
        raise wire.ProtocolError("register agent_id does not match the authenticated agent")
    version = payload.get("protocol_version")
    if version != wire.PROTOCOL_VERSION or isinstance(version, bool):
        raise wire.ProtocolError(
            f"unsupported protocol_version {str(version)[:20]!r} "
            f"(this control plane speaks {wire.PROTOCOL_VERSION})")
    try:
        capacity = parse_capacity(payload.get("capacity"))
    except ValueError as e:
        raise wire.ProtocolError(f"register {e}") from None
    metadata = payload.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise wire.ProtocolError("register metadata must be an object")
    return Registration(
        platform=text(payload.get("platform"), "register platform", 50, required=True),
        region=text(payload.get("region"), "register region", 100),
        capacity=capacity, metadata=metadata, protocol_version=version,
        sessions=sessions_list(payload.get("sessions")))


def usage(value: Any) -> dict:
    """`{sessions, cpu, memory_gb}`: non-negative finite numbers (missing ones are 0)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise wire.ProtocolError("heartbeat usage must be an object")
    clean: dict[str, int | float] = {}
    for key in ("sessions", "cpu", "memory_gb"):
        number = value.get(key, 0)
        if isinstance(number, bool) or not isinstance(number, int | float) or \
                not math.isfinite(number) or number < 0:
            raise wire.ProtocolError(f"heartbeat usage.{key} must be a non-negative number")
        clean[key] = number
    return clean
