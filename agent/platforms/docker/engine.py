"""A small Docker Engine API client on the reactor (treq over the engine's socket).

Only what the driver uses: JSON requests, streams of JSON objects (image pulls, `/events`)
and container logs. The API version is negotiated once (`/_ping`, then `/version`): the
highest version both this client and the engine speak, and every path is prefixed with it.
Errors carry the engine's own message (`EngineError`); turning them into sentences for users
is the driver's job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet import defer, protocol
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from agent.platforms.docker.address import EngineAddress

# Versions this client is written against: 1.40 (Docker 19.03) has everything it uses;
# 1.47 (Docker 27) is the newest it was read against. Engines 29+ refuse below 1.44.
MIN_API = (1, 40)
MAX_API = (1, 47)
REQUEST_TIMEOUT = 30.0
MAX_STREAM_LINE = 1 << 20  # one JSON object of a stream; an engine sends a few hundred bytes


class EngineError(Exception):
    """The engine answered with an error status (or not at all)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_version(text: str) -> tuple[int, int]:
    try:
        major, minor = str(text).strip().split(".")[:2]
        return int(major), int(minor)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not an API version such as 1.41") from None


def choose_version(engine_max: str, engine_min: str | None) -> tuple[int, int]:
    """The highest API version both sides speak, or EngineError saying why there is none."""
    newest = parse_version(engine_max)
    oldest = parse_version(engine_min) if engine_min else (1, 12)
    chosen = min(newest, MAX_API)
    if chosen < MIN_API:
        raise EngineError(None, f"the Docker engine speaks API {newest[0]}.{newest[1]}; the "
                                f"agent needs {MIN_API[0]}.{MIN_API[1]} or newer (Docker "
                                "19.03+)")
    if chosen < oldest:
        raise EngineError(None, f"the Docker engine needs API {oldest[0]}.{oldest[1]} or "
                                f"newer; the agent speaks up to {MAX_API[0]}.{MAX_API[1]}")
    return chosen


@implementer(IAgentEndpointFactory)
class _EngineEndpoints:
    def __init__(self, reactor, address: EngineAddress) -> None:
        self.reactor, self.address = reactor, address

    def endpointForURI(self, uri):  # noqa: N802 - Twisted's interface
        return self.address.endpoint(self.reactor)


class _JsonLines(protocol.Protocol):
    """Receives a response body of newline-separated JSON objects, one callback each."""

    def __init__(self, on_object: Callable[[Any], None]) -> None:
        self.on_object = on_object
        self.done: defer.Deferred[None] = defer.Deferred(lambda _d: self.abort())
        self._buf = b""
        self._failure: Exception | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                self._deliver(line)
        if len(self._buf) > MAX_STREAM_LINE:
            self._failure = EngineError(None, "the engine sent an oversized stream object")
            self.abort()

    def _deliver(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            self._failure = EngineError(None, f"the engine sent invalid JSON: {line[:200]!r}")
            self.abort()
            return
        try:
            self.on_object(obj)
        except Exception as e:  # the consumer's bug must end the stream, not the reactor
            self._failure = e
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone) -> None:  # noqa: N802
        if self._buf.strip() and self._failure is None:
            self._deliver(self._buf)
        if self.done.called:
            return
        if self._failure is not None:
            self.done.errback(self._failure)
        else:
            self.done.callback(None)  # the engine ended the stream (or we aborted it)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # a line per engine connection would drown the agent's log


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class EngineClient:
    def __init__(self, reactor, address: EngineAddress) -> None:
        self.reactor = reactor
        self.address = address
        self.version: tuple[int, int] | None = None
        self.engine_version = ""
        self._pool = _QuietPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._http = HTTPClient(Agent.usingEndpointFactory(
            reactor, _EngineEndpoints(reactor, address), pool=self._pool))

    # -- plumbing ----------------------------------------------------------------------

    def _url(self, path: str, versioned: bool = True) -> str:
        if versioned:
            if self.version is None:
                raise EngineError(None, "the Engine API version is not negotiated yet")
            path = f"/v{self.version[0]}.{self.version[1]}{path}"
        return self.address.base_url + path

    async def _send(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                    body: Any = None, timeout: float | None = REQUEST_TIMEOUT,
                    versioned: bool = True, unbuffered: bool = False):
        """The response (headers received); EngineError if the engine did not answer in
        `timeout` seconds. Cancelling the caller's Deferred cancels the request and raises
        CancelledError, so a command's deadline is not mistaken for an engine fault."""
        kwargs: dict[str, Any] = {"params": _query(params), "unbuffered": unbuffered}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": ["application/json"]}
        where = f"the Docker engine at {self.address.describe()}"
        request = self._http.request(method, self._url(path, versioned), **kwargs)
        expired: list[bool] = []
        timer = None
        if timeout:
            def expire() -> None:
                expired.append(True)
                request.cancel()

            timer = self.reactor.callLater(timeout, expire)
        try:
            return await request
        except Exception as e:
            if expired:
                raise EngineError(None, f"{where} did not answer {method} {path} within "
                                        f"{timeout:g} s") from e
            if isinstance(e, defer.CancelledError) or (
                    isinstance(e, ResponseNeverReceived | ResponseFailed)
                    and any(r.check(defer.CancelledError) for r in e.reasons)):
                raise defer.CancelledError() from e  # the caller cancelled
            raise EngineError(None, f"{where} did not answer ({_describe(e)})") from e
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    async def _error(self, response) -> EngineError:
        raw = await response.content()
        try:
            message = json.loads(raw).get("message") or raw.decode(errors="replace")
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace")
        return EngineError(response.code, message.strip()[:1000] or f"HTTP {response.code}")

    # -- requests ----------------------------------------------------------------------

    async def negotiate(self) -> tuple[int, int]:
        """Agree on an API version with the engine (`/_ping`, then `/version`)."""
        response = await self._send("GET", "/_ping", versioned=False, timeout=10)
        text = (await response.content()).decode(errors="replace").strip()
        if response.code != 200 or text != "OK":
            raise EngineError(response.code, f"/_ping answered {response.code} {text[:100]!r}")
        announced = (response.headers.getRawHeaders("api-version") or [""])[0]
        response = await self._send("GET", "/version", versioned=False, timeout=10)
        if response.code != 200:
            raise await self._error(response)
        info = await response.json()
        self.version = choose_version(info.get("ApiVersion") or announced,
                                      info.get("MinAPIVersion"))
        self.engine_version = str(info.get("Version") or "")
        return self.version

    async def call(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                   body: Any = None, timeout: float | None = REQUEST_TIMEOUT) -> Any:
        """One request; the decoded JSON answer (None when empty); EngineError on >= 400."""
        response = await self._send(method, path, params, body, timeout)
        if response.code >= 400:
            raise await self._error(response)
        raw = await response.content()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    async def stream(self, method: str, path: str, on_object: Callable[[Any], None],
                     params: Mapping[str, Any] | None = None,
                     connect_timeout: float = REQUEST_TIMEOUT,
                     opened: Callable[[], None] | None = None) -> None:
        """A streamed answer (pull progress, events): `on_object` for each JSON object;
        returns when the engine ends it. `opened` runs once the engine has answered (for
        `/events`: from then on nothing is missed). Cancelling closes the connection."""
        response = await self._send(method, path, params, timeout=connect_timeout,
                                    unbuffered=True)
        if response.code >= 400:
            raise await self._error(response)
        if opened is not None:
            opened()
        reader = _JsonLines(on_object)
        response.deliverBody(reader)
        await reader.done

    async def logs_tail(self, container: str, lines: int = 20) -> str:
        """The last lines a container wrote (stdout and stderr, in order)."""
        response = await self._send("GET", f"/containers/{quote(container)}/logs",
                                    {"stdout": 1, "stderr": 1, "tail": lines}, timeout=10)
        if response.code >= 400:
            raise await self._error(response)
        return demultiplex(await response.content()).decode(errors="replace")

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


def demultiplex(raw: bytes) -> bytes:
    """Undo the engine's log framing (8-byte headers: stream, 0, 0, 0, big-endian size) of a
    container without a TTY; anything that does not parse as frames is returned as is."""
    out, i = [], 0
    while i + 8 <= len(raw):
        kind, size = raw[i], int.from_bytes(raw[i + 4:i + 8], "big")
        if kind not in (0, 1, 2) or raw[i + 1:i + 4] != b"\0\0\0" or i + 8 + size > len(raw):
            return raw
        out.append(raw[i + 8:i + 8 + size])
        i += 8 + size
    return b"".join(out) if i == len(raw) else raw


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, (dict, list)):
            out[key] = json.dumps(value)
        elif isinstance(value, bool):
            out[key] = "1" if value else "0"
        else:
            out[key] = str(value)
    return out


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
