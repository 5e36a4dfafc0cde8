"""The fake's HTTP surface: the apiserver's real paths, verbs, discovery and watch streams.

Paths: `/api/v1[/namespaces/{ns}]/{plural}[/{name}[/{subresource}]]` and the same under
`/apis/{group}/{version}`; `/version`, `/api`, `/apis`, `/api/v1`, `/apis/apps/v1`
(legacy discovery: kubectl falls back to it when aggregated discovery is not offered).
Verbs as RBAC names them: GET one = get, GET a collection = list, `?watch=1` = watch,
POST = create, PUT = update, PATCH = patch, DELETE = delete. Authentication by bearer
token or TLS client certificate (401 otherwise), authorization by RBAC-style rules per
user (403 with the real message). Bodies are JSON (a protobuf body, which typed `kubectl
create` sends, gets 415). Watches are chunked streams of `{"type", "object"}` lines that
end after `timeoutSeconds`, with the knobs the fake exposes (in-stream 410, silence).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.web import resource, server

from tests.fakes.kube import status
from tests.fakes.kube.patch import merge_patch, strategic_merge_patch
from tests.fakes.kube.status import ApiStatus
from tests.fakes.kube.store import Resource, SelectorError, TooOld

if TYPE_CHECKING:
    from tests.fakes.kube.server import FakeKube

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def parse_path(path: str) -> tuple[str, str | None, str | None, str | None, str | None]:
    """(group_version, namespace, plural, name, subresource) of an API path."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        gv, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise status.ApiStatus(404, "NotFound", "the server could not find the requested "
                               "resource")
    namespace = None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    sub = "/".join(rest[2:]) or None
    return gv, namespace, plural, name, sub


class ApiResource(resource.Resource):
    isLeaf = True

    def __init__(self, fake: FakeKube) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        try:
            result = self._handle(request)
        except ApiStatus as e:
            return self._status(request, e)
        except (ValueError, KeyError, TypeError) as e:
            return self._status(request, status.bad_request(f"the fake could not handle the "
                                                            f"request: {e}"))
        if result is server.NOT_DONE_YET:
            return result
        return json.dumps(result).encode()

    def _status(self, request, e: ApiStatus) -> bytes:
        request.setResponseCode(e.code)
        return json.dumps(e.body()).encode()

    # -- routing ---------------------------------------------------------------------------

    def _handle(self, request) -> Any:
        path = request.path.decode()
        method = request.method.decode()
        query = {k.decode(): v[-1].decode() for k, v in request.args.items()}
        user = self.fake.authenticate(request)
        if path == "/version":
            return self.fake.version()
        discovery = self.fake.discovery(path)
        if discovery is not None:
            return discovery
        gv, namespace, plural, name, sub = parse_path(path)
        res = self.fake.resource(gv, plural)
        if res is None:
            raise ApiStatus(404, "NotFound", "the server could not find the requested "
                            "resource")
        watching = method == "GET" and query.get("watch") in ("1", "true")
        verb = {"GET": "watch" if watching else ("get" if name else "list"),
                "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method)
        if verb is None:
            raise ApiStatus(405, "MethodNotAllowed", f"method {method} not allowed")
        self.fake.authorize(user, verb, res, namespace, name, sub)
        body = self._body(request, method)
        self.fake.record(user, verb, res, namespace, name, sub, body)
        if sub and sub not in ("scale", "status"):
            raise ApiStatus(404, "NotFound", f"the server could not find the requested "
                            f"resource ({sub})")
        if watching:
            return self._watch(request, res, namespace, query)
        if verb == "list":
            return self._list(res, namespace, query)
        if verb == "create":
            return self._create(request, res, namespace, body)
        assert name is not None
        if sub == "scale":
            return self._scale(res, namespace, name, verb, body, request)
        if verb == "get":
            return self._get(res, namespace, name)
        if verb == "update":
            return self._update(res, namespace, name, body)
        if verb == "patch":
            return self._patch(res, namespace, name, body, request)
        return self._delete(res, namespace, name, body)

    def _body(self, request, method: str) -> Any:
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        raw = request.content.read()
        if not raw:
            return None
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip()
        if ctype == "application/vnd.kubernetes.protobuf":
            raise ApiStatus(415, "UnsupportedMediaType", "the fake API server speaks JSON "
                            "only (no protobuf)")
        try:
            return json.loads(raw)
        except ValueError:
            raise status.bad_request("the body is not valid JSON") from None

    # -- verbs -----------------------------------------------------------------------------

    def _get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.fake.store.get(res, namespace or "", name)
        if obj is None:
            raise status.not_found(res, name)
        return obj

    def _list(self, res: Resource, namespace: str | None, query: dict[str, str]) -> dict:
        try:
            items = self.fake.store.items(res, namespace, query.get("labelSelector"),
                                          query.get("fieldSelector"))
        except SelectorError as e:
            raise status.bad_request(str(e)) from None
        for item in items:  # list items carry neither kind nor apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{res.kind}List", "apiVersion": res.group_version,
                "metadata": {"resourceVersion": str(self.fake.store.revision)},
                "items": items}

    def _create(self, request, res: Resource, namespace: str | None, body: Any) -> dict:
        if not isinstance(body, dict):
            raise status.bad_request("the body must be an object")
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + self.fake.random_suffix()
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise status.bad_request("the namespace of the provided object does not match "
                                     "the namespace sent on the request")
        status.validate(res, body)
        self.fake.admit("create", res, namespace or "", body)
        if self.fake.store.get(res, namespace or "", meta["name"]) is not None:
            raise status.already_exists(res, meta["name"])
        meta.pop("resourceVersion", None)
        created = self.fake.store.create(res, namespace or "", self.fake.defaults(res, body))
        request.setResponseCode(201)
        return created

    def _update(self, res: Resource, namespace: str | None, name: str, body: Any) -> dict:
        current = self._get(res, namespace, name)
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != current["metadata"]["resourceVersion"]:
            raise status.conflict(res, name)
        body.setdefault("metadata", {})["name"] = name
        status.validate(res, body)
        if "status" in current and "status" not in body:
            body["status"] = current["status"]
        return self.fake.store.update(res, namespace or "", body)

    def _patch(self, res: Resource, namespace: str | None, name: str, body: Any,
               request) -> dict:
        current = self._get(res, namespace, name)
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip()
        if ctype == MERGE:
            patched = merge_patch(current, body)
        elif ctype == STRATEGIC:
            patched = strategic_merge_patch(current, body)
        else:
            raise ApiStatus(415, "UnsupportedMediaType", f"the fake does not support patch "
                            f"type {ctype!r}")
        patched["metadata"]["name"] = name
        patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        status.validate(res, patched)
        return self.fake.store.update(res, namespace or "", patched)

    def _delete(self, res: Resource, namespace: str | None, name: str, body: Any) -> dict:
        current = self._get(res, namespace, name)
        return self.fake.delete(res, namespace or "", current, body or {})

    def _scale(self, res: Resource, namespace: str | None, name: str, verb: str,
               body: Any, request) -> dict:
        if res.kind != "Deployment":
            raise ApiStatus(404, "NotFound", "the server could not find the requested "
                            "resource")
        dep = self._get(res, namespace, name)
        if verb in ("patch", "update"):
            scale = self.fake.scale_of(dep)
            ctype = (request.getHeader("content-type") or "").split(";")[0].strip()
            changed = merge_patch(scale, body) if verb == "patch" and ctype in (
                MERGE, STRATEGIC) else body
            replicas = int((changed.get("spec") or {}).get("replicas", 0))
            dep["spec"]["replicas"] = replicas
            dep = self.fake.store.update(res, namespace or "", dep)
        return self.fake.scale_of(dep)

    # -- watch -----------------------------------------------------------------------------

    def _watch(self, request, res: Resource, namespace: str | None,
               query: dict[str, str]) -> Any:
        stream = WatchStream(self.fake, request, res)
        if self.fake.gone_http.get(res.plural):
            self.fake.gone_http[res.plural] -= 1
            raise status.gone("too old resource version (HTTP 410 knob)")
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise status.bad_request("timeoutSeconds must be a number") from None
        try:
            stream.watch = self.fake.store.watch(
                res, namespace, query.get("resourceVersion", ""),
                query.get("labelSelector"), query.get("fieldSelector"), stream.send)
        except TooOld as e:
            stream.start()
            stream.error(status.gone(str(e)))
            return server.NOT_DONE_YET
        except SelectorError as e:
            raise status.bad_request(str(e)) from None
        stream.start(timeout, query.get("allowWatchBookmarks") == "true")
        return server.NOT_DONE_YET


class WatchStream:
    """One open `?watch=1` response. Real behaviour: 200 with chunked JSON lines; an
    expired resourceVersion is an ERROR event with a 410 Status inside the stream, then
    the end of the stream; the server ends every watch after timeoutSeconds."""

    def __init__(self, fake: FakeKube, request, res: Resource) -> None:
        self.fake, self.request, self.res = fake, request, res
        self.watch = None
        self.open = True
        self.silent = False  # a hung connection (FakeKube.silence)
        self.queued: list[bytes] = []
        self._timer = self._bookmarks = None
        request.notifyFinish().addBoth(self._gone)

    def start(self, timeout: float | None = None, bookmarks: bool = False) -> None:
        self.request.setResponseCode(200)
        self.request.write(b"")  # headers now: clients see the watch open
        self.fake.streams.append(self)
        if timeout is not None:
            self._timer = self.fake.reactor.callLater(timeout, self.finish)
        if bookmarks and self.fake.bookmark_interval:
            from twisted.internet.task import LoopingCall

            self._bookmarks = LoopingCall(self.bookmark)
            self._bookmarks.clock = self.fake.reactor
            self._bookmarks.start(self.fake.bookmark_interval, now=False)

    def send(self, kind: str, obj: dict[str, Any]) -> None:
        line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
        if self.silent:
            return  # a hung connection: nothing arrives
        if self.open:
            self.request.write(line)

    def bookmark(self) -> None:
        self.send("BOOKMARK", {"kind": self.res.kind, "apiVersion": self.res.group_version,
                               "metadata": {"resourceVersion": str(self.fake.store.revision)}})

    def error(self, e: ApiStatus) -> None:
        """The in-stream ERROR event (410 Expired), then the end of the stream."""
        if self.open:
            self.request.write(json.dumps({"type": "ERROR", "object": e.body()}).encode()
                               + b"\n")
        self.finish()

    def finish(self) -> None:
        if self.silent:
            return  # a dead connection never ends cleanly either
        if self.open:
            self.open = False
            self._stop()
            self.request.finish()

    def _gone(self, _=None) -> None:
        self.open = False
        self._stop()

    def _stop(self) -> None:
        if self.watch is not None:
            self.fake.store.unwatch(self.watch)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._bookmarks is not None and self._bookmarks.running:
            self._bookmarks.stop()
        if self in self.fake.streams:
            self.fake.streams.remove(self)
