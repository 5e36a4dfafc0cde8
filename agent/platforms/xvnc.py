"""Xvnc displays for the local driver: display numbers, credentials, waiting for RFB.

Each session's Xvnc accepts only the agent and the session itself:
- RFB only on a Unix socket (`-rfbunixpath`, mode 0600, `-rfbport -1`: no TCP at all) in a
  directory only the agent (root) and the session's account can enter; the agent reaches it
  through an open descriptor of that directory (`/proc/self/fd/N/rfb.sock`), so a long
  state-directory path never hits the 108-byte limit of socket addresses.
- X11 with an MIT-MAGIC-COOKIE (`-auth`) in a file only the session's account can read, and
  `-nolisten tcp`. The filesystem socket is in the session's private /tmp; the abstract one
  (`@/tmp/.X11-unix/XN`, which Xlib tries first) is kept: binding it reserves display N on
  the whole machine, so a session's DISPLAY never reaches another X server, and the cookie
  refuses every other client that tries it.
- A sandboxed Xvnc's lock file is in the session's private /tmp, so the agent also puts a
  placeholder `/tmp/.X<n>-lock` on the host naming the sandbox's pid (X's own format):
  X servers that pick a display by probing lock files (`xvfb-run -a`, `vncserver`) then
  skip display n instead of taking it and dying on its abstract socket.
- `-UseBlacklist=0`: TigerVNC blocks an address for a while after five connections that
  end before authenticating; every connection comes from the agent (readiness probes,
  viewers that close early), so one address would lock every viewer out.

A session is "started" only once its VNC server answers with an RFB banner, checked by
connecting and reading it (polled with a deadline through the reactor).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer, protocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater

X11_SOCKET_DIR = Path("/tmp/.X11-unix")
RFB_BANNER_PREFIX = b"RFB 003."
RFB_SOCKET = "rfb.sock"


def _abstract_x_sockets() -> set[int]:
    """Display numbers whose abstract X socket is bound on this machine's network namespace."""
    found: set[int] = set()
    try:
        with open("/proc/net/unix", "rb") as f:
            for line in f:
                name = line.rsplit(None, 1)[-1]
                if name.startswith(b"@/tmp/.X11-unix/X"):
                    try:
                        found.add(int(name[len(b"@/tmp/.X11-unix/X"):]))
                    except ValueError:
                        pass
    except OSError:
        pass
    return found


def display_in_use(n: int, abstract: set[int] | None = None) -> bool:
    """An X server (ours or anyone's) holds display :n: its abstract socket is bound, or its
    socket or lock file exists in the host's /tmp."""
    taken = _abstract_x_sockets() if abstract is None else abstract
    return (n in taken or (X11_SOCKET_DIR / f"X{n}").exists()
            or Path(f"/tmp/.X{n}-lock").exists())


def claim_display_lock(n: int, pid: int, tmp: Path = Path("/tmp")) -> bool:
    """Create `/tmp/.X<n>-lock` naming `pid` as an X server does ("%10d\n", mode 0444);
    False if another server's lock is already there."""
    try:
        fd = os.open(tmp / f".X{n}-lock",
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{pid:10d}\n".encode())
    finally:
        os.close(fd)
    return True


def remove_display_files(n: int, pid: int | None, tmp: Path = Path("/tmp"),
                         socket: bool = True) -> None:
    """Remove the lock (and, with `socket`, the X socket) an Xvnc killed with SIGKILL
    leaves behind in `tmp`, or the placeholder lock of a sandboxed one.

    Only when the lock names `pid` (our dead Xvnc, or our sandbox), so another server's
    display is never touched (sessions without a sandbox use the host's /tmp).
    """
    lock = tmp / f".X{n}-lock"
    try:
        owner = int(lock.read_text().strip())
    except (OSError, ValueError):
        return
    if pid is not None and owner != pid:
        return
    for path in (lock, tmp / ".X11-unix" / f"X{n}") if socket else (lock,):
        try:
            path.unlink()
        except OSError:
            pass


class DisplayAllocator:
    """Hands out display numbers no other session of ours or X server uses."""

    def __init__(self, first: int = 10, count: int = 1000,
                 in_use: Callable[[int], bool] | None = None) -> None:
        self.first, self.count = first, count
        self._in_use = in_use
        self._taken: set[int] = set()

    def allocate(self, avoid: set[int] | None = None) -> int:
        avoid = avoid or set()
        in_use = self._in_use
        if in_use is None:
            abstract = _abstract_x_sockets()  # read once per allocation

            def in_use(n: int) -> bool:
                return display_in_use(n, abstract)

        for n in range(self.first, self.first + self.count):
            if n in self._taken or n in avoid or in_use(n):
                continue
            self._taken.add(n)
            return n
        raise OSError(errno.EBUSY, "no free X display number")

    def release(self, display: int) -> None:
        self._taken.discard(display)


def xvnc_argv(display: int, rfb_socket: str, auth_file: str, geometry: str = "1280x800",
              depth: int = 24, desktop: str = "StreamSpace") -> list[str]:
    return ["Xvnc", f":{display}", "-rfbport", "-1", "-rfbunixpath", rfb_socket,
            "-rfbunixmode", "0600", "-SecurityTypes", "None", "-UseBlacklist=0",
            "-auth", auth_file, "-nolisten", "tcp", "-geometry", geometry,
            "-depth", str(depth), "-AlwaysShared", "-desktop", desktop]


def write_xauthority(path: Path, owner: tuple[int, int] | None = None) -> None:
    """A fresh MIT-MAGIC-COOKIE-1 for any display (FamilyWild), readable by `owner` only.

    The Xauthority format: family, address, display number, auth name, auth data, each but
    the family as a big-endian 16-bit length and bytes.
    """
    def field(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    cookie = os.urandom(16)
    entry = struct.pack(">H", 0xFFFF) + field(b"") + field(b"") + \
        field(b"MIT-MAGIC-COOKIE-1") + field(cookie)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, entry)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


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


async def read_rfb_banner(reactor, endpoint: IStreamClientEndpoint,
                          timeout: float = 2.0) -> bytes:
    """Connect, read the 12-byte RFB ProtocolVersion, disconnect."""
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


async def wait_for_rfb(reactor, endpoint: Callable[[], IStreamClientEndpoint],
                       timeout: float, gave_up: Callable[[], bool],
                       interval: float = 0.05) -> bytes:
    """Poll until the endpoint speaks RFB; stop early when `gave_up()` (e.g. Xvnc exited)."""
    deadline = reactor.seconds() + timeout
    last: Exception | None = None
    while True:
        if gave_up():
            raise RfbNotReady("the VNC server exited before accepting connections")
        try:
            banner = await read_rfb_banner(reactor, endpoint())
        except (defer.CancelledError, ConnectingCancelledError):
            # the start itself was cancelled (its deadline), which is not "not ready yet"
            raise defer.CancelledError() from None
        except Exception as e:  # refused, no socket yet, reset, timeout: not ready yet
            last = e
        else:
            if banner.startswith(RFB_BANNER_PREFIX):
                return banner
            raise RfbNotReady(f"the VNC server does not speak RFB (got {banner!r})")
        if reactor.seconds() >= deadline:
            raise RfbNotReady(f"the VNC server did not accept connections within "
                              f"{timeout:g} s ({last})")
        await deferLater(reactor, interval, lambda: None)


def x_environment_markers(state_dir: Path, session_id: str) -> dict[str, str]:
    """Environment markers that let the agent find every process of a session in /proc."""
    return {"STREAMSPACE_AGENT_DIR": str(state_dir), "STREAMSPACE_SESSION_ID": session_id}


def default_path() -> str:
    return os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
