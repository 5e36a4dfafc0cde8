"""PATCH bodies: JSON merge patch (RFC 7386) and the part of strategic merge patch that
kubectl's client-side `apply` and `scale` send.

Strategic merge patch stands for the apiserver's Go implementation, reduced to what these
tests exercise: lists of objects merge by their patch merge key (`name` for containers,
env, volumes, ports of a Service by `port`, container ports by `containerPort`),
`$setElementOrder/<list>` gives the order, `$patch: delete` removes an element,
`$retainKeys` and other directives are ignored; other lists are replaced.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name",
              "ports": None, "conditions": "type"}


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    key = MERGE_KEYS.get(field, "")
    if field == "ports" and items and isinstance(items[0], dict):
        return "containerPort" if "containerPort" in items[0] else "port"
    return key or None


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders = {k.split("/", 1)[1]: v for k, v in patch.items()
              if k.startswith("$setElementOrder/")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            merge_key = _merge_key(key, value or result[key])
            if merge_key and all(isinstance(v, dict) for v in value + result[key]):
                result[key] = _merge_list(result[key], value, merge_key, orders.get(key))
            else:
                result[key] = copy.deepcopy(value)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: list[dict], patch: list[dict], key: str,
                order: list[dict] | None) -> list[dict]:
    by_key = {item.get(key): copy.deepcopy(item) for item in current}
    for item in patch:
        ident = item.get(key)
        if item.get("$patch") == "delete":
            by_key.pop(ident, None)
        else:
            by_key[ident] = strategic_merge_patch(by_key.get(ident), item)
    if order:
        wanted = [o.get(key) for o in order]
        ordered = [by_key[k] for k in wanted if k in by_key]
        return ordered + [v for k, v in by_key.items() if k not in wanted]
    return list(by_key.values())
