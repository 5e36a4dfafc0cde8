"""A list+watch cache of one kind of object, kept current the way kubespawner does it.

List with the label selector, then watch from the list's resourceVersion with a server
timeout; when the stream ends, watch again from the last resourceVersion seen (BOOKMARK
events move it too); re-list on 410 Gone, whether it comes as an HTTP status or, as it
usually does, as an ERROR event inside a 200 stream. A watch that goes silent past
`timeout_seconds + silence_grace` is dead whatever TCP thinks (kubespawner's most reported
bug, #209/#577, is a watch that dies quietly and is never restarted): the connection is
closed and the watch restarted. Other failures back off (capped, jittered) and re-list.

Every change reaches `on_change(event_type, object)` (ADDED, MODIFIED, DELETED; a re-list
reports the difference to what the cache held), so the driver reacts to the cache only.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from agent.platforms.kubernetes.client import ApiError, KubeClient, WatchGone, WatchSilent

log = Logger()

Change = Callable[[str, dict[str, Any]], None]


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class Reflector:
    def __init__(self, reactor, client: KubeClient, path: str, kind: str, *,
                 label_selector: str | None = None, on_change: Change | None = None,
                 timeout_seconds: int = 60, silence_grace: float = 15.0,
                 backoff_cap: float = 10.0) -> None:
        self.reactor, self.client, self.path, self.kind = reactor, client, path, kind
        self.label_selector = label_selector
        self.on_change = on_change or (lambda _t, _o: None)
        self.timeout_seconds, self.silence_grace = timeout_seconds, silence_grace
        self.backoff_cap = backoff_cap
        self.objects: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = False
        self.lists = self.watches = 0  # for logs and tests
        self.last_error = ""
        self._sync_waiters: list[defer.Deferred] = []
        self._loop: defer.Deferred | None = None
        self._stopping = False

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: None if f.check(defer.CancelledError)
                              else log.failure("the {kind} watch stopped", f, kind=self.kind))

    def stop(self) -> None:
        self._stopping = True
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None

    def wait_synced(self) -> defer.Deferred:
        """Fires once the first list has filled the cache."""
        if self.synced:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._sync_waiters.append(d)
        return d

    async def _run(self) -> None:
        failures = 0
        need_list = True
        while not self._stopping:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                failures = 0
            except WatchGone as e:
                log.info("{kind} watch: resourceVersion {rv} is gone ({why}); re-listing",
                         kind=self.kind, rv=self.resource_version, why=str(e))
                need_list = True
            except WatchSilent as e:
                log.warn("{kind} watch went silent ({why}); restarting it", kind=self.kind,
                         why=str(e))
            except defer.CancelledError:
                raise
            except Exception as e:
                failures += 1
                need_list = True
                self.last_error = str(e) if isinstance(e, ApiError) else repr(e)
                delay = min(self.backoff_cap, 0.25 * 2 ** min(failures, 8))
                delay = delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter only
                level = log.error if failures in (1, 10) or failures % 50 == 0 else log.debug
                level("{kind} list/watch failed ({err}); retrying in {delay:.1f} s",
                      kind=self.kind, err=self.last_error, delay=delay)
                await deferLater(self.reactor, delay, lambda: None)

    async def _list(self) -> None:
        body = await self.client.list(self.path, self.label_selector)
        self.lists += 1
        fresh = {_key(o): o for o in body.get("items") or []}
        old, self.objects = self.objects, fresh
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        for key, obj in old.items():
            if key not in fresh:
                self._notify("DELETED", obj)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._notify("ADDED", obj)
            elif _rv(before) != _rv(obj):
                self._notify("MODIFIED", obj)
        if not self.synced:
            self.synced = True
            waiters, self._sync_waiters = self._sync_waiters, []
            for d in waiters:
                d.callback(None)

    async def _watch(self) -> None:
        self.watches += 1
        await self.client.watch(
            self.path, resource_version=self.resource_version,
            label_selector=self.label_selector, timeout_seconds=self.timeout_seconds,
            silence=self.timeout_seconds + self.silence_grace, on_event=self._event)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        rv = _rv(obj)
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = _key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if rv:
            self.resource_version = rv
        self._notify(kind, obj)

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            self.on_change(kind, obj)
        except Exception:
            log.failure("handling a {kind} change", kind=self.kind)

    def values(self) -> list[dict[str, Any]]:
        return list(self.objects.values())


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
