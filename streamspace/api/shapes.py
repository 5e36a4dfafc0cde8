"""Rows to JSON: what each resource looks like on the wire (see openapi.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_epoch(seconds: float) -> str:
    return iso(datetime.fromtimestamp(seconds, tz=UTC))


def user(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "username": row["username"], "role": row["role"],
        "display_name": row["display_name"], "email": row["email"],
        "disabled": row["disabled"], "max_sessions": row["max_sessions"],
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
    }


def _number(value: Decimal | float | int) -> float | int:
    f = float(value)
    return int(f) if f.is_integer() else f


def template(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "display_name": row["display_name"],
        "description": row["description"], "icon": row["icon"], "category": row["category"],
        "vnc_port": row["vnc_port"], "cpu": _number(row["cpu"]),
        "memory_mb": row["memory_mb"], "env": row["env"],
        "persistent_home": row["persistent_home"],
        "idle_timeout_seconds": row["idle_timeout_seconds"], "platforms": row["platforms"],
        "enabled": row["enabled"],
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
    }


def session(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "owner": row["owner"],
        "user_id": row["user_id"], "template": row["template"], "state": row["state"],
        "error": row["error"], "agent_id": row["agent_id"], "platform": row["platform"],
        "region": row["region"], "requested_platform": row["requested_platform"],
        "requested_region": row["requested_region"],
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
        "last_activity": iso(row["last_activity"]),
        "state_changed_at": iso(row["state_changed_at"]),
        "viewer_url": f"/vnc-viewer/{row['id']}",
    }


def session_event(row: dict[str, Any]) -> dict[str, Any]:
    return {"state": row["state"], "message": row["message"],
            "created_at": iso(row["created_at"])}


def agent(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "agent_id": row["agent_id"], "platform": row["platform"],
        "region": row["region"], "status": row["status"], "capacity": row["capacity"],
        "metadata": row["metadata"], "protocol_version": row["protocol_version"],
        "last_heartbeat": iso(row["last_heartbeat"]),
        "active_sessions": int(row["active_sessions"]),
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
    }


def audit_entry(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "created_at": iso(row["created_at"]), "actor_id": row["actor_id"],
        "actor_name": row["actor_name"], "action": row["action"],
        "target_type": row["target_type"], "target_id": row["target_id"],
        "client_addr": row["client_addr"], "success": row["success"],
        "details": row["details"],
    }
