"""A small Kubernetes REST client on treq: JSON requests and streaming watches.

Everything runs on the reactor, nothing blocks: one `HTTPConnectionPool` (persistent,
bounded per host), at most `max_requests` requests in flight (a semaphore), a deadline on
every request (response and body), and watches read line by line from the chunked
response. A refusal comes back as an `ApiError` carrying the API's Status object (its
`code`, `reason` and readable `message`: "exceeded quota: ...", "admission webhook ...
denied the request: ...").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers

from agent.platforms.kubernetes.cluster import ClusterAccess, ClusterTLSPolicy

log = Logger()

MAX_BODY = 16 * 1024 * 1024  # a list of a few hundred pods is well under this
MAX_LINE = 4 * 1024 * 1024  # one watch event
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server refused a request; `message` is its Status message."""

    def __init__(self, code: int, reason: str, message: str, status: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.status = status or {}


class WatchGone(Exception):
    """410 Gone: the resourceVersion we watch from is too old; re-list."""


class WatchSilent(Exception):
    """Nothing arrived on a watch for longer than its silence deadline."""


def _error_from(code: int, body: bytes) -> ApiError:
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return ApiError(int(status.get("code") or code), str(status.get("reason") or ""),
                        str(status.get("message") or f"HTTP {code}"), status)
    text = body[:300].decode("utf-8", "replace").strip()
    return ApiError(code, "", f"HTTP {code}" + (f": {text}" if text else ""))


def path_for(group_version: str, plural: str, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
    """/api/v1/namespaces/ns/pods/name, /apis/apps/v1/namespaces/ns/deployments..."""
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    parts = [root]
    if namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(plural)
    if name:
        parts.append(quote(name, safe=""))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class _Body(protocol.Protocol):
    """Collects a bounded body; or, for a watch, hands over complete lines."""

    def __init__(self, finished: defer.Deferred, on_line: Callable[[bytes], None] | None,
                 on_data: Callable[[], None] | None = None) -> None:
        self.finished, self.on_line, self.on_data = finished, on_line, on_data
        self.buffer = bytearray()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data()
        self.buffer += data
        if self.on_line is None:
            if len(self.buffer) > MAX_BODY:
                self._abort(ValueError("the API server's answer is too large"))
            return
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            if line.strip():
                try:
                    self.on_line(line)
                except Exception as e:  # a handler error ends this watch, not the agent
                    self._abort(e)
                    return
        if len(self.buffer) > MAX_LINE:
            self._abort(ValueError("a watch event is too large"))

    def _abort(self, error: Exception) -> None:
        if not self.finished.called:
            self.finished.errback(error)
        self.close()

    def close(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        self.lost = True
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(bytes(self.buffer))
        else:
            self.finished.errback(reason)


class KubeClient:
    def __init__(self, reactor, access: ClusterAccess, *, request_timeout: float = 30.0,
                 max_requests: int = 8, user_agent: str = "streamspace-agent") -> None:
        self.reactor, self.access = reactor, access
        self.request_timeout = request_timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_requests
        self.pool.cachedConnectionTimeout = 60
        agent = Agent(reactor, contextFactory=ClusterTLSPolicy(access), pool=self.pool,
                      connectTimeout=min(request_timeout, 10.0))
        self.http = treq.client.HTTPClient(agent)
        self.limit = defer.DeferredSemaphore(max_requests)
        self.user_agent = user_agent

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()

    def _headers(self, content_type: str | None = None) -> Headers:
        headers = Headers({"Accept": [JSON], "User-Agent": [self.user_agent]})
        auth = self.access.authorization()
        if auth:
            headers.setRawHeaders("Authorization", [auth])
        if content_type:
            headers.setRawHeaders("Content-Type", [content_type])
        return headers

    # -- plain requests --------------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None,
                      params: dict[str, str] | None = None,
                      content_type: str = JSON) -> dict[str, Any]:
        """One API call under the concurrency limit and the request deadline."""
        await self.limit.acquire()
        try:
            call = defer.ensureDeferred(self._request(method, path, body, params,
                                                      content_type))
            call.addTimeout(self.request_timeout, self.reactor)
            try:
                return await call
            except defer.TimeoutError:
                raise ApiError(0, "Timeout", f"the API server did not answer {method} "
                               f"{path} within {self.request_timeout:g} s") from None
        finally:
            self.limit.release()

    async def _request(self, method: str, path: str, body: Any,
                       params: dict[str, str] | None, content_type: str) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        response = await self._send(
            method, path, params=params, data=data,
            headers=self._headers(content_type if data is not None else None))
        finished: defer.Deferred = defer.Deferred()
        reader = _Body(finished, None)
        response.deliverBody(reader)
        try:
            content = await finished
        except BaseException:
            reader.close()  # cancelled (deadline): do not leave the connection reading
            raise
        if not 200 <= response.code < 300:
            raise _error_from(response.code, content)
        try:
            return json.loads(content) if content else {}
        except ValueError:
            raise ApiError(response.code, "", "the API server answered with invalid "
                           "JSON") from None

    async def _send(self, method: str, path: str, **kwargs):
        """The response, or: CancelledError when cancelled (the caller's deadline), an
        ApiError saying the API server cannot be reached."""
        try:
            return await self.http.request(method, self.access.url(path),
                                           allow_redirects=False, unbuffered=True, **kwargs)
        except (ResponseNeverReceived, ResponseFailed, RequestNotSent, RequestGenerationFailed,
                RequestTransmissionFailed) as e:
            # (a request with a body cancelled while it is sent fails as RequestGeneration-
            # or RequestTransmissionFailed wrapping the CancelledError)
            reasons = getattr(e, "reasons", []) or []
            if any(r.check(defer.CancelledError) for r in reasons):
                raise defer.CancelledError() from None
            why = "; ".join(r.getErrorMessage() for r in reasons) or type(e).__name__
            raise ApiError(0, "Unavailable", f"the API server at {self.access.host}:"
                           f"{self.access.port} did not answer {method} {path}: {why}") from None
        except ConnectError as e:
            raise ApiError(0, "Unavailable", f"cannot reach the API server at "
                           f"{self.access.host}:{self.access.port}: {e}") from None

    def list(self, path: str, label_selector: str | None = None) -> defer.Deferred:
        params = {"labelSelector": label_selector} if label_selector else None
        return defer.ensureDeferred(self.request("GET", path, params=params))

    def get(self, path: str) -> defer.Deferred:
        return defer.ensureDeferred(self.request("GET", path))

    def create(self, path: str, obj: dict[str, Any]) -> defer.Deferred:
        return defer.ensureDeferred(self.request("POST", path, obj))

    def merge_patch(self, path: str, patch: dict[str, Any]) -> defer.Deferred:
        return defer.ensureDeferred(self.request("PATCH", path, patch,
                                                 content_type=MERGE_PATCH))

    def delete(self, path: str, options: dict[str, Any] | None = None) -> defer.Deferred:
        return defer.ensureDeferred(self.request("DELETE", path, options))

    # -- watches ---------------------------------------------------------------------------

    async def watch(self, path: str, *, resource_version: str, label_selector: str | None,
                    timeout_seconds: int, silence: float,
                    on_event: Callable[[str, dict[str, Any]], None]) -> None:
        """Stream `?watch=1` events from `resource_version` until the server ends the
        stream (normally after `timeout_seconds`). Raises WatchGone on 410 (HTTP or an
        ERROR event inside the stream), WatchSilent when nothing arrives for `silence`
        seconds (the connection is then closed), ApiError on other refusals."""
        params = {"watch": "1", "resourceVersion": resource_version,
                  "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"}
        if label_selector:
            params["labelSelector"] = label_selector
        response = await self._send("GET", path, params=params, headers=self._headers(),
                                    timeout=self.request_timeout)
        if response.code == 410:
            raise WatchGone(f"HTTP 410 for {path}")
        if response.code != 200:
            finished: defer.Deferred = defer.Deferred()
            response.deliverBody(_Body(finished, None))
            raise _error_from(response.code, await finished)
        done: defer.Deferred = defer.Deferred()
        gone: list[str] = []
        timer = None

        def line(raw: bytes) -> None:
            event = json.loads(raw)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    gone.append(str(obj.get("message") or "410 Gone"))
                    raise WatchGone(gone[-1])
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or ""),
                               str(obj.get("message") or "watch error"), obj)
            on_event(str(kind), obj)

        def quiet() -> None:
            if not done.called:
                done.errback(WatchSilent(f"no watch data on {path} for {silence:g} s"))
            body.close()

        def heard() -> None:
            if timer is not None and timer.active():
                timer.reset(silence)

        body = _Body(done, line, heard)
        timer = self.reactor.callLater(silence, quiet)
        response.deliverBody(body)
        try:
            await done
        finally:
            if timer.active():
                timer.cancel()
            body.close()
