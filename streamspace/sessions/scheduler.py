"""Placement: which online agent takes a session. Pure logic, no I/O.

Policy (docs/operations.md, "Scheduling"): pending-wait. When no matching agent has room,
the session stays `pending` with the reason in its events and is placed as soon as an
agent can take it, or fails when its pending timeout passes.
"""

from __future__ import annotations

from streamspace_common.capacity import parse_capacity


def room_for(agent: dict, template: dict) -> str | None:
    """None when the agent can take one more session of `template`, else why not.

    A capacity that does not parse (a bad row) makes that one agent unusable, with the
    reason; it never stops placement on the other agents."""
    try:
        cap = parse_capacity(agent.get("capacity"))
    except ValueError as e:
        return f"{agent['agent_id']} reports an invalid capacity ({e})"
    max_sessions = cap["max_sessions"]
    if max_sessions and agent["sessions"] + 1 > max_sessions:
        return f"{agent['agent_id']} runs {agent['sessions']}/{max_sessions} sessions"
    max_cpu = cap["max_cpu"]
    if max_cpu and agent["cpu"] + float(template.get("cpu") or 0) > max_cpu:
        return f"{agent['agent_id']} has no CPU left ({agent['cpu']:g}/{max_cpu:g} cores used)"
    max_mem_gb = cap["max_memory_gb"]
    need_gb = (agent["memory_mb"] + int(template.get("memory_mb") or 0)) / 1024
    if max_mem_gb and need_gb > max_mem_gb:
        return f"{agent['agent_id']} has no memory left ({agent['memory_mb'] / 1024:g}/" \
               f"{max_mem_gb:g} GB used)"
    return None


def choose_agent(candidates: list[dict], template: dict) -> tuple[dict | None, str]:
    """The least-loaded agent with room, or (None, a reason a user can read)."""
    if not candidates:
        return None, "no online agent matches the requested platform/region"
    with_room = []
    reasons = []
    for agent in candidates:
        why = room_for(agent, template)
        if why is None:
            with_room.append(agent)
        else:
            reasons.append(why)
    if not with_room:
        return None, "no agent has capacity for this session: " + "; ".join(reasons[:5])
    with_room.sort(key=lambda a: (a["sessions"], a["cpu"], a["agent_id"]))
    return with_room[0], ""
