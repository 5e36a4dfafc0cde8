"""A test control plane for the agent: a small autobahn WebSocket server speaking
docs/protocol.md, standing in for the real agent hub (streamspace/) so the agent can be
tested on its own. It is not the product's hub and shares no code with it; it checks the
agent's frames against the documented required fields itself, so the tests prove the agent
follows the document, not merely that it agrees with its own encoder.

Endpoints: `/api/v1/agent/connect?agent_id=` (Bearer agent token) and
`/api/v1/agent/tunnel/<tunnel_id>` (Bearer one-time secret, registered with
`allow_tunnel`). Refusals happen before the upgrade (401/403/409), like the real hub.

A second connection for a connected agent id is arbitrated as the hub does it (issue 10
item 9, after Buildbot): the old connection is pinged with a short deadline; if it answers,
the new one is refused with 409; if not, the old one is dropped and the new one admitted.
`answer_pings = False` on a leg makes it a peer that no longer answers pings.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, protocol, reactor

from tests.support.polling import until
from tests.support.tcp_peers import Flooder, PatternChecker

CONNECT = "/api/v1/agent/connect"
TUNNEL = "/api/v1/agent/tunnel/"
MAX_FRAME = 64 * 1024

# docs/protocol.md, "Agent -> control plane": required payload fields.
REQUIRED = {
    "register": {"agent_id", "platform", "region", "protocol_version", "capacity",
                 "sessions", "metadata"},
    "heartbeat": {"usage", "sessions"},
    "ack": {"command_id"},
    "complete": {"command_id", "result"},
    "failed": {"command_id", "reason"},
    "session_status": {"session_id", "state", "reason"},
    "session_progress": {"session_id", "message"},
}


def now_iso(offset: float = 0.0) -> str:
    t = datetime.fromtimestamp(reactor.seconds() + offset, UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Leg(WebSocketServerProtocol):
    cp: FakeControlPlane
    role = ""
    tunnel_id = ""
    answer_pings = True
    _pong_waiter: defer.Deferred | None = None

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            self.sendPong(payload)

    def onPong(self, payload: bytes) -> None:
        waiter, self._pong_waiter = self._pong_waiter, None
        if waiter is not None and not waiter.called:
            waiter.callback(True)

    async def alive(self, timeout: float) -> bool:
        """Ping it; True if it answers within `timeout` seconds."""
        self._pong_waiter = defer.Deferred()
        waiter = self._pong_waiter
        waiter.addTimeout(timeout, reactor, onTimeoutCancel=lambda *_: False)
        self.sendPing()
        return await waiter

    async def _arbitrate(self, request):
        """A live agent keeps its connection; a dead one is replaced (see module doc)."""
        cp, old = self.cp, self.cp.control
        if old is not None and await old.alive(cp.arbitration_timeout):
            cp.refusals.append(409)
            raise ConnectionDeny(409, "agent_already_connected")
        if old is not None and cp.control is old:
            cp.replaced += 1
            cp.control = None
            old.transport.abortConnection()
        self.role = "control"
        self.registered = False
        return None

    def onConnect(self, request):
        cp = self.cp
        auth = request.headers.get("authorization", "")
        if request.path == CONNECT:
            agent_id = (request.params.get("agent_id") or [""])[0]
            if not agent_id:
                cp.refusals.append(400)
                raise ConnectionDeny(400, "no agent id")
            if auth != f"Bearer {cp.token}" or agent_id != cp.agent_id:
                cp.refusals.append(401)
                raise ConnectionDeny(401, "unauthorized")
            if cp.control is not None:
                return defer.ensureDeferred(self._arbitrate(request))
            self.role = "control"
            self.registered = False
            return None
        if request.path.startswith(TUNNEL):
            tunnel_id = request.path[len(TUNNEL):]
            secret = cp.secrets.pop(tunnel_id, None)  # one time, right or wrong
            if secret is None or auth != f"Bearer {secret}":
                cp.refusals.append(403)
                raise ConnectionDeny(403, "forbidden")
            self.role, self.tunnel_id = "tunnel", tunnel_id
            self.received = bytearray()
            self.checker: PatternChecker | None = None
            self.sink = None
            self.max_frame = 0
            self.frames = 0
            self.closed: tuple[int | None, str] | None = None
            return None
        raise ConnectionDeny(404, "not found")

    def onOpen(self) -> None:
        if self.role == "control":
            self.cp.control = self
            self.cp.connections += 1
        else:
            self.cp.tunnels[self.tunnel_id] = self

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.role == "control":
            self._control_message(payload, isBinary)
            return
        if not isBinary:
            self.cp.errors.append("text frame on a tunnel")
            self.sendClose(4000, "binary frames only")
            return
        self.frames += 1
        self.max_frame = max(self.max_frame, len(payload))
        if self.sink is not None:
            self.sink(payload)
        elif self.checker is not None:
            self.checker.feed(payload)
        else:
            self.received += payload

    def _control_message(self, payload: bytes, isBinary: bool) -> None:
        cp = self.cp
        problem = None
        frame: Any = None
        if isBinary:
            problem = "binary frame on the control channel"
        elif len(payload) > MAX_FRAME:
            problem = "oversize frame"
        else:
            try:
                frame = json.loads(payload)
            except ValueError:
                problem = "invalid JSON"
        if problem is None:
            problem = _check(frame, self.registered)
        if problem is not None:
            cp.errors.append(problem)
            self.sendClose(4000, problem)
            return
        if frame["type"] == "register":
            self.registered = True
        cp.frames.append(frame)
        if frame["type"] == "register" and cp.auto_register:
            self.send("registered", {"agent_id": frame["payload"]["agent_id"],
                                     "heartbeat_interval": cp.heartbeat_interval,
                                     "server_time": now_iso(cp.clock_offset)})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.role == "control":
            self.cp.closes.append((code, reason))
            if self.cp.control is self:
                self.cp.control = None
        elif self.role == "tunnel":
            self.closed = (code, reason or "")

    def send(self, frame_type: str, payload: dict[str, Any]) -> None:
        frame = {"type": frame_type, "id": str(uuid.uuid4()), "timestamp": now_iso(),
                 "payload": payload}
        self.sendMessage(json.dumps(frame).encode(), isBinary=False)

    # tunnel helpers
    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def flood(self, total: int) -> Flooder:
        flooder = Flooder(reactor, self.transport,
                          lambda data: self.sendMessage(data, isBinary=True), total)
        flooder.start()
        return flooder


def _check(frame: Any, registered: bool) -> str | None:
    if not isinstance(frame, dict):
        return "frame is not an object"
    for key in ("type", "id", "timestamp", "payload"):
        if key not in frame:
            return f"frame has no {key}"
    if not isinstance(frame["payload"], dict):
        return "payload is not an object"
    try:
        datetime.fromisoformat(frame["timestamp"].replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return "timestamp is not ISO 8601"
    kind = frame["type"]
    if kind not in REQUIRED:
        return f"unknown type {kind}"
    if not registered and kind != "register":
        return f"{kind} before register"
    missing = REQUIRED[kind] - set(frame["payload"])
    if missing:
        return f"{kind} misses {sorted(missing)}"
    return None


class FakeControlPlane:
    def __init__(self, agent_id: str = "agent-1", token: str = "agent-token",
                 heartbeat_interval: float = 10.0, auto_register: bool = True) -> None:
        self.agent_id, self.token = agent_id, token
        self.heartbeat_interval = heartbeat_interval
        self.auto_register = auto_register
        self.clock_offset = 0.0
        self.frames: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.refusals: list[int] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.connections = 0
        self.replaced = 0  # old connections dropped because they no longer answered pings
        self.arbitration_timeout = 0.5
        self.control: _Leg | None = None
        self.secrets: dict[str, str] = {}
        self.tunnels: dict[str, _Leg] = {}
        self.port: int | None = None
        self.tls = None
        self._listening = None
        self._bridges: list[Any] = []

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, port: int = 0, tls=None) -> int:
        """Listen on 127.0.0.1; `tls` (server context options) makes it wss://."""
        self.tls = tls if tls is not None else self.tls
        factory = WebSocketServerFactory(reactor=reactor)
        factory.setProtocolOptions(maxFramePayloadSize=1 << 20, maxMessagePayloadSize=1 << 20,
                                   perMessageCompressionAccept=lambda offers: None)
        cp = self

        class Leg(_Leg):
            pass

        Leg.cp = cp
        factory.protocol = Leg
        if self.tls is not None:
            self._listening = reactor.listenSSL(port, factory, self.tls, interface="127.0.0.1")
        else:
            self._listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection (a control plane going away)."""
        legs = [self.control, *self.tunnels.values()]
        for leg in legs:
            if leg is None or leg.transport is None or getattr(leg, "closed", None):
                continue
            try:
                leg.transport.abortConnection()
            except Exception:  # noqa: BLE001 (already closing: nothing left to abort)
                pass
        self.control = None
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()
        for bridge in self._bridges:
            await bridge.stopListening()
        self._bridges.clear()

    # -- control channel -----------------------------------------------------------------

    def of_type(self, frame_type: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == frame_type]

    def about(self, command_id: str, frame_type: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["payload"].get("command_id") == command_id
                and (frame_type is None or f["type"] == frame_type)]

    async def wait_frame(self, frame_type: str, timeout: float = 10.0, **match: Any
                         ) -> dict[str, Any]:
        def find():
            for f in self.frames:
                if f["type"] == frame_type and all(
                        f["payload"].get(k) == v for k, v in match.items()):
                    return f
            return None

        return await until(find, timeout, what=f"{frame_type} {match}")

    async def wait_connected(self, timeout: float = 10.0) -> _Leg:
        return await until(lambda: self.control if self.control is not None
                           and self.control.registered else None, timeout,
                           what="a registered control connection")

    def command(self, command_type: str, session_id: str | None = None,
                data: dict[str, Any] | None = None, command_id: str | None = None,
                deadline_in: float = 60.0) -> str:
        assert self.control is not None, "no agent connected"
        command_id = command_id or str(uuid.uuid4())
        self.control.send("command", {
            "command_id": command_id, "command_type": command_type, "session_id": session_id,
            "data": data or {}, "deadline": now_iso(deadline_in)})
        return command_id

    async def outcome(self, command_id: str, timeout: float = 20.0) -> dict[str, Any]:
        def find():
            for f in self.frames:
                if f["type"] in ("complete", "failed") and \
                        f["payload"]["command_id"] == command_id:
                    return f
            return None

        return await until(find, timeout, what=f"the outcome of command {command_id}")

    # -- tunnels -------------------------------------------------------------------------

    def allow_tunnel(self, tunnel_id: str | None = None) -> tuple[str, str]:
        tunnel_id = tunnel_id or uuid.uuid4().hex
        secret = uuid.uuid4().hex
        self.secrets[tunnel_id] = secret
        return tunnel_id, secret

    def bridge(self, tunnel_id: str) -> int:
        """A TCP port relaying to an open tunnel, so a real VNC client can use it."""
        leg = self.tunnels[tunnel_id]

        class Bridge(protocol.Protocol):
            def connectionMade(self) -> None:
                if leg.received:
                    self.transport.write(bytes(leg.received))
                    leg.received.clear()
                leg.sink = self.transport.write

            def dataReceived(self, data: bytes) -> None:
                leg.sendMessage(data, isBinary=True)

            def connectionLost(self, reason) -> None:
                leg.sink = None
                leg.sendClose(1000, "viewer left")

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Bridge), interface="127.0.0.1")
        self._bridges.append(port)
        return port.getHost().port
