"""Xvnc displays for the local driver: free display/port picking and waiting for RFB.

A session is "started" only once its VNC server answers with an RFB banner on its port,
checked by connecting and reading it (polled with a deadline through the reactor), so the
endpoint we report really works when the control plane uses it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater

X11_SOCKET_DIR = Path("/tmp/.X11-unix")
RFB_BANNER_PREFIX = b"RFB 003."


def display_in_use(n: int) -> bool:
    """An X server (ours or anyone's) holds display :n if its socket or lock file exists."""
    return (X11_SOCKET_DIR / f"X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists()


def remove_display_files(n: int, pid: int | None) -> None:
    """Remove the lock and socket an Xvnc killed with SIGKILL leaves behind.

    Only when the lock names `pid` (our dead Xvnc), so another server's display is never
    touched.
    """
    lock = Path(f"/tmp/.X{n}-lock")
    try:
        owner = int(lock.read_text().strip())
    except (OSError, ValueError):
        return
    if pid is not None and owner != pid:
        return
    for path in (lock, X11_SOCKET_DIR / f"X{n}"):
        try:
            path.unlink()
        except OSError:
            pass


class DisplayAllocator:
    """Hands out display numbers and TCP ports no other session of ours or X server uses."""

    def __init__(self, first: int = 10, count: int = 1000,
                 in_use: Callable[[int], bool] = display_in_use) -> None:
        self.first, self.count = first, count
        self._in_use = in_use
        self._taken: set[int] = set()
        self._ports: set[int] = set()

    def allocate(self, avoid: set[int] | None = None) -> tuple[int, int]:
        avoid = avoid or set()
        for n in range(self.first, self.first + self.count):
            if n in self._taken or n in avoid or self._in_use(n):
                continue
            port = self._free_port(5900 + n)
            self._taken.add(n)
            self._ports.add(port)
            return n, port
        raise OSError(errno.EBUSY, "no free X display number")

    def release(self, display: int, port: int) -> None:
        self._taken.discard(display)
        self._ports.discard(port)

    def _free_port(self, preferred: int) -> int:
        for candidate in (preferred, 0, 0, 0):
            if candidate and (candidate in self._ports or candidate > 65535):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", candidate))
                except OSError:
                    continue
                port = s.getsockname()[1]
            if port not in self._ports:
                return port
        raise OSError(errno.EADDRINUSE, "no free TCP port for the VNC server")


def xvnc_argv(display: int, port: int, geometry: str = "1280x800", depth: int = 24,
              desktop: str = "StreamSpace") -> list[str]:
    return ["Xvnc", f":{display}", "-rfbport", str(port), "-localhost",
            "-SecurityTypes", "None", "-geometry", geometry, "-depth", str(depth),
            "-AlwaysShared", "-nolisten", "tcp", "-desktop", desktop]


class _Banner(protocol.Protocol):
    def __init__(self) -> None:
        self.result: defer.Deferred[bytes] = defer.Deferred()
        self._buf = b""

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= 12 and not self.result.called:
            self.result.callback(self._buf[:12])
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.result.called:
            self.result.errback(ConnectionError("closed before the RFB banner"))


async def read_rfb_banner(reactor, host: str, port: int, timeout: float = 2.0) -> bytes:
    """Connect, read the 12-byte RFB ProtocolVersion, disconnect."""
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return await read_banner_via(reactor, endpoint, timeout)


async def read_banner_via(reactor, endpoint, timeout: float = 2.0) -> bytes:
    """The 12-byte RFB ProtocolVersion read through any IStreamClientEndpoint (a TCP
    port, a Kubernetes Service, the API server's port-forward)."""
    factory = protocol.Factory.forProtocol(_Banner)
    factory.noisy = False
    proto = await endpoint.connect(factory)
    banner = proto.result
    banner.addTimeout(timeout, reactor)
    try:
        return await banner
    finally:
        if proto.transport is not None:
            proto.transport.loseConnection()


class RfbNotReady(Exception):
    """The VNC server did not answer RFB before the deadline, or gave up first."""


async def wait_for_rfb(reactor, host: str, port: int, timeout: float,
                       gave_up: Callable[[], bool], interval: float = 0.05) -> bytes:
    """Poll until `host:port` speaks RFB; stop early when `gave_up()` (e.g. Xvnc exited)."""
    deadline = reactor.seconds() + timeout
    last: Exception | None = None
    while True:
        if gave_up():
            raise RfbNotReady("the VNC server exited before accepting connections")
        try:
            banner = await read_rfb_banner(reactor, host, port)
        except Exception as e:  # refused, reset, timeout: not ready yet
            last = e
        else:
            if banner.startswith(RFB_BANNER_PREFIX):
                return banner
            raise RfbNotReady(f"port {port} does not speak RFB (got {banner!r})")
        if reactor.seconds() >= deadline:
            raise RfbNotReady(f"the VNC server did not accept connections within "
                              f"{timeout:g} s ({last})")
        await deferLater(reactor, interval, lambda: None)


def x_environment_markers(state_dir: Path, session_id: str) -> dict[str, str]:
    """Environment markers that let the agent find every process of a session in /proc."""
    return {"STREAMSPACE_AGENT_DIR": str(state_dir), "STREAMSPACE_SESSION_ID": session_id}


def default_path() -> str:
    return os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
