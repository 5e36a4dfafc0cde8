"""Starting `twistd` as a real subprocess and checking what it leaves behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from streamspace.processes import process_alive as alive  # re-exported for the tests
from streamspace_common import procfs

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc (children of children too)."""
    return set(procfs.descendants(pid))


def wait_gone(pids: set[int], timeout: float = 20.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return set()
        time.sleep(0.05)  # blocking test helper polling /proc, not reactor code
    return {p for p in pids if alive(p)}


def twistd(plugin: str, args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "--logger=streamspace_common.logs.observer", plugin, *args],
        env=full_env, cwd=kwargs.pop("cwd", str(REPO)), stdout=kwargs.pop("stdout", subprocess.PIPE),
        stderr=subprocess.STDOUT, text=True, **kwargs)


def make_run(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """`scripts/run.sh`, what `make run` starts after set-up (with this virtualenv)."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO), "VENV": str(Path(TWISTD).parent.parent), **env}
    return subprocess.Popen([str(REPO / "scripts" / "run.sh"), *args], env=full_env,
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def database_url(dsn: str) -> str:
    """The fixtures hand out libpq key=value DSNs; operators configure DATABASE_URL (the
    other keys, e.g. `require_auth`, become its query parameters)."""
    from urllib.parse import urlencode

    parts = {k: v.strip("'") for k, v in (item.split("=", 1) for item in dsn.split())}
    url = (f"postgresql://{parts.pop('user')}:{parts.pop('password')}@{parts.pop('host')}:"
           f"{parts.pop('port')}/{parts.pop('dbname')}")
    return f"{url}?{urlencode(parts)}" if parts else url


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (from /proc/net/tcp*),
    e.g. {"127.0.0.1"} or {"0.0.0.0"}."""
    import ipaddress

    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            found.add(str(ipaddress.ip_address(words)))
    return found
