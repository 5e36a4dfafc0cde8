"""Benchmark: what invented HTTP methods and paths cost /metrics.

Starts a real `twistd streamspace` (dev mode, embedded PostgreSQL), sends REQUESTS requests
with random methods and paths over pipelined keep-alive connections, then times scrapes
of /metrics and prints one JSON document: the scrape's size and series count before and
after, and its latency (issue 9 item 4 measured 3.8 MB and 1.7 s per scrape after 20,000
such requests, before the labels were bounded).
Run: .venv/bin/python bench/metrics_scrape.py [--requests 20000] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling a subprocess from a script, not reactor code
    raise SystemExit(f"{url} never became ready")


def invented(rng: random.Random, i: int) -> bytes:
    method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 12)))
    path = rng.choice(["/", "/api/v1/", "/api/v1/sessions/", "/novnc/"]) + f"x{i}"
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def flood(port: int, count: int, connections: int = 8) -> float:
    """Send `count` pipelined requests; returns the seconds until all were answered."""
    rng = random.Random(4)
    started = time.monotonic()
    per = count // connections
    socks = []
    for c in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        batch = b"".join(invented(rng, c * per + i) for i in range(per))
        s.sendall(batch + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        socks.append(s)
    for s in socks:  # the server closes each connection after its last answer
        while s.recv(1 << 16):
            pass
        s.close()
    return time.monotonic() - started


def scrape(base: str) -> tuple[float, bytes]:
    started = time.monotonic()
    with urllib.request.urlopen(base + "/metrics", timeout=60) as r:
        body = r.read()
    return time.monotonic() - started, body


def series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="streamspace-bench-metrics-"))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
           "STREAMSPACE_STATE_DIR": str(state), "ADMIN_PASSWORD": "bench-admin-password"}
    proc = subprocess.Popen([TWISTD, "--nodaemon", "--pidfile=", "streamspace", "--port",
                             str(port)], env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/ready")
        _, before = scrape(base)
        flood_seconds = flood(port, args.requests)
        timings, body = [], b""
        for _ in range(args.scrapes):
            seconds, body = scrape(base)
            timings.append(seconds * 1000)
        print(json.dumps({
            "requests": args.requests,
            "flood_requests_per_second": round(args.requests / flood_seconds),
            "scrape_bytes_before": len(before), "scrape_bytes_after": len(body),
            "series_before": series(before), "series_after": series(body),
            "scrape_ms_p50": round(statistics.median(timings), 2),
            "scrape_ms_max": round(max(timings), 2),
        }, indent=2))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
