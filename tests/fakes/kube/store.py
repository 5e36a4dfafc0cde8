"""The fake API server's object store: what etcd + the apiserver's watch cache stand for.

Real behaviour kept: one cluster-wide resourceVersion counter (a string to clients) bumped
on every write; `metadata.uid`, `creationTimestamp`, `generation` (bumped when `spec`
changes); label selectors (=, ==, !=, in, notin, exists, !exists) and simple field
selectors (dotted path = / != value); list returns the collection's resourceVersion;
watch from a resourceVersion replays what changed since, and a resourceVersion older than
the retained history is "too old" (410 Expired). `compact()` drops the history, as etcd
compaction does, so resuming a watch from an old resourceVersion is then refused.
"""

from __future__ import annotations

import copy
import datetime
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HISTORY = 2000


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- selectors ------------------------------------------------------------------------------

_SET = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


class SelectorError(ValueError):
    pass


def _split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def label_matcher(text: str | None) -> Callable[[dict[str, str]], bool]:
    """A matcher for a labelSelector string (raises SelectorError when it is invalid)."""
    if not text:
        return lambda labels: True
    tests: list[Callable[[dict[str, str]], bool]] = []
    for part in _split(text):
        m = _EQ.match(part)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                tests.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                tests.append(lambda lb, k=key, v=value: lb.get(k) == v)
            continue
        m = _SET.match(part)
        if not m:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        neg, key, op, values = m.groups()
        if op:
            wanted = {v.strip() for v in values.split(",") if v.strip()}
            if op == "in":
                tests.append(lambda lb, k=key, w=wanted: lb.get(k) in w)
            else:
                tests.append(lambda lb, k=key, w=wanted: lb.get(k) not in w)
        elif neg:
            tests.append(lambda lb, k=key: k not in lb)
        else:
            tests.append(lambda lb, k=key: k in lb)
    return lambda labels: all(t(labels) for t in tests)


def _dotted(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_matcher(text: str | None) -> Callable[[dict[str, Any]], bool]:
    if not text:
        return lambda obj: True
    tests = []
    for part in text.split(","):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        path, op, value = m.groups()
        if op == "!=":
            tests.append(lambda o, p=path, v=value: _dotted(o, p) != v)
        else:
            tests.append(lambda o, p=path, v=value: _dotted(o, p) == v)
    return lambda obj: all(t(obj) for t in tests)


# -- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A kind the fake serves: group version, plural, kind."""

    group_version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.group_version.split("/")[0] if "/" in self.group_version else ""

    @property
    def qualified(self) -> str:
        """`deployments.apps`, `pods`: how real error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


class TooOld(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


Listener = Callable[[str, dict[str, Any]], None]


@dataclass(eq=False)
class Watch:
    resource: Resource
    namespace: str | None
    labels: Callable[[dict[str, str]], bool]
    fields: Callable[[dict[str, Any]], bool]
    send: Listener

    def wants(self, resource: Resource, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (resource == self.resource
                and (self.namespace is None or meta.get("namespace") == self.namespace)
                and self.labels(meta.get("labels") or {}) and self.fields(obj))


class Store:
    def __init__(self) -> None:
        self.revision = 100
        self.objects: dict[tuple[Resource, str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, Resource, str, dict[str, Any]]] = []
        self.oldest = self.revision  # the oldest resourceVersion a watch may resume from
        self.watches: list[Watch] = []
        self.hooks: list[Callable[[Resource, str, dict[str, Any]], None]] = []

    def _bump(self) -> int:
        self.revision += 1
        return self.revision

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, resource: Resource, namespace: str | None = None,
              labels: str | None = None, fields: str | None = None) -> list[dict[str, Any]]:
        lm, fm = label_matcher(labels), field_matcher(fields)
        found = []
        for (res, ns, _name), obj in sorted(self.objects.items(), key=lambda kv: kv[0][1:]):
            if res != resource or (namespace is not None and ns != namespace):
                continue
            if lm(obj["metadata"].get("labels") or {}) and fm(obj):
                found.append(copy.deepcopy(obj))
        return found

    def create(self, resource: Resource, namespace: str, obj: dict[str, Any]
               ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["resourceVersion"] = str(self._bump())
        if "spec" in obj and resource.kind in ("Deployment",):
            meta["generation"] = 1
        obj["apiVersion"], obj["kind"] = resource.group_version, resource.kind
        self.objects[(resource, namespace, meta["name"])] = obj
        self._emit(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    def update(self, resource: Resource, namespace: str, obj: dict[str, Any]
               ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        key = (resource, namespace, obj["metadata"]["name"])
        old = self.objects[key]
        meta = obj["metadata"]
        for kept in ("uid", "creationTimestamp", "namespace"):
            meta[kept] = old["metadata"].get(kept)
        if "generation" in old["metadata"]:
            bump = old.get("spec") != obj.get("spec")
            meta["generation"] = old["metadata"]["generation"] + (1 if bump else 0)
        meta["resourceVersion"] = str(self._bump())
        obj["apiVersion"], obj["kind"] = resource.group_version, resource.kind
        self.objects[key] = obj
        self._emit(resource, "MODIFIED", obj)
        return copy.deepcopy(obj)

    def remove(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.pop((resource, namespace, name), None)
        if obj is None:
            return None
        obj["metadata"]["resourceVersion"] = str(self._bump())
        self._emit(resource, "DELETED", obj)
        return copy.deepcopy(obj)

    def _emit(self, resource: Resource, kind: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.append((rv, resource, kind, copy.deepcopy(obj)))
        if len(self.history) > HISTORY:
            dropped = self.history[: len(self.history) - HISTORY]
            self.history = self.history[-HISTORY:]
            self.oldest = dropped[-1][0]
        for watch in list(self.watches):
            if watch.wants(resource, obj):
                watch.send(kind, copy.deepcopy(obj))
        for hook in list(self.hooks):
            hook(resource, kind, copy.deepcopy(obj))

    def compact(self) -> None:
        """Forget the history (etcd compaction): older resourceVersions become too old."""
        self.history.clear()
        self.oldest = self.revision

    def watch(self, resource: Resource, namespace: str | None, since: str,
              labels: str | None, fields: str | None, send: Listener) -> Watch:
        """Replay changes after `since` (or ADDED for everything when it is ""/"0"), then
        stream. Raises TooOld when `since` is older than the retained history."""
        watch = Watch(resource, namespace, label_matcher(labels), field_matcher(fields), send)
        if since in ("", "0"):
            for obj in self.items(resource, namespace, labels, fields):
                send("ADDED", obj)
        else:
            requested = int(since)
            if requested < self.oldest:
                raise TooOld(requested, self.oldest)
            for rv, res, kind, obj in self.history:
                if rv > requested and watch.wants(res, obj):
                    send(kind, copy.deepcopy(obj))
        self.watches.append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        if watch in self.watches:
            self.watches.remove(watch)
