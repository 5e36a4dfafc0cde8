"""Helpers for tests that run real Xvnc sessions: leak sweeps and a real VNC client.

Every process a local driver starts carries STREAMSPACE_AGENT_DIR=<its state dir> in its
environment, so a test can find (and kill) everything it started, even after a failure.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from agent.platforms.procgroup import pids_with_environ

VNCDO = str(Path(sys.executable).parent / "vncdo")


def session_pids(state_dir: Path, session_id: str | None = None) -> list[int]:
    markers = [f"STREAMSPACE_AGENT_DIR={Path(state_dir).absolute()}"]
    if session_id:
        markers.append(f"STREAMSPACE_SESSION_ID={session_id}")
    return pids_with_environ(*markers)


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL whatever is still running for `state_dir`; returns what it found."""
    left = session_pids(state_dir)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def xvnc_cmdlines(state_dir: Path) -> list[str]:
    found = []
    for pid in session_pids(state_dir):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "Xvnc" in cmd:
            found.append(cmd)
    return found


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
