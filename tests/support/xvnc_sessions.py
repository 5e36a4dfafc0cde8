"""Helpers for tests that run real Xvnc sessions: leak sweeps, a real VNC client, and the
session accounts and sandboxes the local driver makes.

Every process a local driver starts carries STREAMSPACE_AGENT_DIR=<its state dir> in its
environment, and every account it creates carries its agent's tag, so a test can find (and
remove) everything it started, even after a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue

from agent.platforms.local_accounts import accounts_of, agent_tag
from agent.platforms.procgroup import pids_of_uid, pids_with_environ
from streamspace_common import procfs

VNCDO = str(Path(sys.executable).parent / "vncdo")


def session_pids(state_dir: Path, session_id: str | None = None) -> list[int]:
    markers = [f"STREAMSPACE_AGENT_DIR={Path(state_dir).absolute()}"]
    if session_id:
        markers.append(f"STREAMSPACE_SESSION_ID={session_id}")
    return pids_with_environ(*markers)


def session_accounts(state_dir: Path) -> list[str]:
    """Names of the Unix accounts the agent of `state_dir` has now."""
    return [p.pw_name for p in accounts_of(agent_tag(state_dir))]


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL whatever is still running for `state_dir` and remove its accounts (kept
    homes keep accounts while an agent runs; a test's agent is gone); returns the pids."""
    left = session_pids(state_dir)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for entry in accounts_of(agent_tag(state_dir)):
        left += pids_of_uid(entry.pw_uid)
        remove_account(entry.pw_name, entry.pw_uid)
    return left


def remove_account(name: str, uid: int) -> None:
    for _attempt in range(20):
        for pid in pids_of_uid(uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if subprocess.run(["/usr/sbin/userdel", name], capture_output=True).returncode in (0, 6):
            return
    raise AssertionError(f"could not remove the account {name}")


def _cmdline(pid: int) -> str:
    return " ".join(procfs.cmdline(pid))


def xvnc_cmdlines(state_dir: Path) -> list[str]:
    return [cmd for cmd in map(_cmdline, session_pids(state_dir)) if cmd.startswith("Xvnc")]


def inner_pids(state_dir: Path, session_id: str, program: str) -> list[int]:
    """Pids of `program` running inside the session (not its bwrap)."""
    return [pid for pid in session_pids(state_dir, session_id)
            if os.path.basename(_cmdline(pid).split(" ")[0]) == program]


def uid_of(pid: int) -> int:
    uid = procfs.uid_of(pid)
    assert uid is not None, f"process {pid} is gone"
    return uid


class _Relay(protocol.Protocol):
    """One side of a bridged connection: writes what it reads to its peer."""

    def __init__(self, peer: _Relay | None = None) -> None:
        self.peer = peer

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Inbound(_Relay):
    """The VNC client's side: reads nothing until the endpoint's side is connected."""

    def __init__(self, endpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        outbound = _Relay(self)

        def linked(_):
            self.peer = outbound
            self.transport.resumeProducing()

        self.endpoint.connect(protocol.Factory.forProtocol(lambda: outbound)).addCallbacks(
            linked, lambda _f: self.transport.loseConnection())


class EndpointBridge(protocol.Factory):
    """A loopback TCP port relaying each connection to a client endpoint (what the agent's
    tunnel dials), so a TCP-only VNC client reaches a session through the driver."""

    def __init__(self, endpoint) -> None:
        self.endpoint = endpoint
        self.port = None

    def buildProtocol(self, addr):
        return _Inbound(self.endpoint)

    def listen(self) -> int:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    def close(self):
        return self.port.stopListening() if self.port is not None else None


async def capture_through(endpoint, path: Path) -> None:
    """A real VNC client (vncdotool) takes a screenshot through `endpoint` into `path`."""
    bridge = EndpointBridge(endpoint)
    port = bridge.listen()
    try:
        await capture(port, path)
    finally:
        await defer.maybeDeferred(bridge.close)


async def capture(port: int, path: Path, host: str = "127.0.0.1") -> None:
    """A real VNC client (vncdotool) takes a screenshot of `host::port` into `path`."""
    out, err, code = await getProcessOutputAndValue(
        VNCDO, ["-t", "20", "-s", f"{host}::{port}", "capture", str(path)],
        env=dict(os.environ), reactor=reactor)
    assert code == 0, f"vncdo failed ({code}): {err.decode(errors='replace')[-500:]}"


def distinct_colours(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return len(im.convert("RGB").getcolors(maxcolors=1 << 24) or [])
