"""Placement: which online agent takes a new session. Pure logic, no I/O.

Policy (documented in docs/operations.md): fail fast. If no matching agent has room, the
session becomes `failed` at once with a reason naming what was missing, rather than
waiting in a queue a user cannot see.
"""

from __future__ import annotations


def _room(agent: dict, template: dict) -> str | None:
    """None when the agent can take the template, else why not."""
    cap = agent.get("capacity") or {}
    max_sessions = int(cap.get("max_sessions") or 0)
    if max_sessions and agent["sessions"] + 1 > max_sessions:
        return f"{agent['agent_id']} runs {agent['sessions']}/{max_sessions} sessions"
    max_cpu = float(cap.get("max_cpu") or 0)
    if max_cpu and agent["cpu"] + float(template.get("cpu") or 0) > max_cpu:
        return f"{agent['agent_id']} has no CPU left ({agent['cpu']:g}/{max_cpu:g} cores used)"
    max_mem_gb = float(cap.get("max_memory_gb") or 0)
    need_gb = (agent["memory_mb"] + int(template.get("memory_mb") or 0)) / 1024
    if max_mem_gb and need_gb > max_mem_gb:
        return f"{agent['agent_id']} has no memory left ({agent['memory_mb'] / 1024:g}/" \
               f"{max_mem_gb:g} GB used)"
    return None


def choose_agent(candidates: list[dict], template: dict) -> tuple[dict | None, str]:
    """The least-loaded agent with room, or (None, a reason a user can read)."""
    if not candidates:
        return None, "no agent is available: no online agent matches the requested " \
                     "platform/region"
    with_room = []
    reasons = []
    for agent in candidates:
        why = _room(agent, template)
        if why is None:
            with_room.append(agent)
        else:
            reasons.append(why)
    if not with_room:
        return None, "no agent has capacity for this session: " + "; ".join(reasons[:5])
    with_room.sort(key=lambda a: (a["sessions"], a["cpu"], a["agent_id"]))
    return with_room[0], ""
