"""Benchmark: the full VNC path against websockify, same TCP target, same run.

  viewer (autobahn client) --WS--> control plane --WS--> agent --TCP--> target
  viewer (autobahn client) --WS--> websockify ---------------------TCP--> target

Measures upload and download throughput with 64 KiB messages and the round-trip latency of
100-byte messages (p50/p99), then prints one JSON document with both and their ratios.
Run: .venv/bin/python bench/vnc_relay.py [--mib 64] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import os
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

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, reactor

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MSG = 64 * 1024
ADMIN_PASSWORD = "bench-admin-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)  # harness set-up polling, before the reactor runs
    raise SystemExit(f"bench: timed out waiting for {what}")


def api(base, method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


class Harness:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="streamspace-bench-"))
        os.chmod(self.tmp, 0o755)

    def spawn(self, argv, env=None, name="proc") -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def setup(self) -> dict:
        target = free_port()
        self.spawn([sys.executable, str(REPO / "bench" / "tcp_target.py"), str(target)],
                   name="target")
        cp = free_port()
        base = f"http://127.0.0.1:{cp}"
        self.spawn([str(BIN / "twistd"), "--nodaemon", "--pidfile=", "streamspace", "--port",
                    str(cp), "--interface", "127.0.0.1"],
                   env={"STREAMSPACE_STATE_DIR": str(self.tmp / "cp"),
                        "ADMIN_PASSWORD": ADMIN_PASSWORD, "LOG_LEVEL": "warn"},
                   name="control-plane")
        wait_until(lambda: urllib.request.urlopen(base + "/ready", timeout=2).status == 200,
                   what="the control plane")
        token = api(base, "POST", "/api/v1/auth/login",
                    {"username": "admin", "password": ADMIN_PASSWORD})["token"]
        agent_token = api(base, "POST", "/api/v1/agents",
                          {"agent_id": "bench", "platform": "local"}, token)["token"]
        self.spawn([sys.executable, str(REPO / "bench" / "bench_agent.py"), base, "bench",
                    agent_token, str(target), str(self.tmp / "agent")], name="agent")
        wait_until(lambda: api(base, "GET", "/api/v1/agents/bench", token=token)["status"]
                   == "online", what="the agent")
        session = api(base, "POST", "/api/v1/sessions", {"template": "terminal"}, token)
        wait_until(lambda: api(base, "GET", f"/api/v1/sessions/{session['id']}",
                               token=token)["state"] == "running", what="the session")
        wsp = free_port()
        self.spawn([str(BIN / "websockify"), f"127.0.0.1:{wsp}", f"127.0.0.1:{target}"],
                   name="websockify")
        wait_until(lambda: socket.create_connection(("127.0.0.1", wsp), timeout=1).close()
                   is None, what="websockify")

        def streamspace_url():
            body = api(base, "POST", f"/api/v1/sessions/{session['id']}/vnc-token", token=token)
            return f"ws://127.0.0.1:{cp}" + body["url"]

        return {"streamspace": streamspace_url,
                "websockify": lambda: f"ws://127.0.0.1:{wsp}/"}


class Client(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.on_data(payload)

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"{code} {reason}"))


async def open_ws(url: str, on_data):
    factory = WebSocketClientFactory(url, protocols=["binary"])
    factory.protocol = Client
    factory.opened = defer.Deferred()
    factory.on_data = on_data
    factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0,
                               autoFragmentSize=0)
    connectWS(factory)
    return await factory.opened


async def measure_latency(url: str, rounds: int) -> dict:
    got = defer.Deferred()
    pending = bytearray()

    def on_data(data):
        nonlocal got
        pending.extend(data)
        if len(pending) >= 100 and not got.called:
            got.callback(None)

    ws = await open_ws(url, on_data)
    ws.sendMessage(b"E", isBinary=True)
    samples = []
    msg = b"x" * 100
    for _ in range(rounds):
        got = defer.Deferred()
        start = time.perf_counter()
        ws.sendMessage(msg, isBinary=True)
        await got
        samples.append((time.perf_counter() - start) * 1000)
        del pending[:100]
    ws.sendClose()
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3), "rounds": rounds}


async def measure_upload(url: str, total: int) -> float:
    done = defer.Deferred()
    ws = await open_ws(url, lambda data: done.called or done.callback(None))
    start = time.perf_counter()
    ws.sendMessage(b"U" + total.to_bytes(8, "big"), isBinary=True)
    chunk = b"u" * MSG
    sent = 0
    while sent < total:
        ws.sendMessage(chunk, isBinary=True)
        sent += MSG
        if ws.transport and len(getattr(ws.transport, "dataBuffer", b"")) > 4 * MSG:
            await _drain(ws.transport)
    await done
    elapsed = time.perf_counter() - start
    ws.sendClose()
    return total / elapsed / (1024 * 1024)


async def _drain(transport) -> None:
    while len(getattr(transport, "dataBuffer", b"")) > MSG:
        d = defer.Deferred()
        reactor.callLater(0.0005, d.callback, None)
        await d


async def measure_download(url: str, total: int) -> float:
    done = defer.Deferred()
    received = 0

    def on_data(data):
        nonlocal received
        received += len(data)
        if received >= total and not done.called:
            done.callback(None)

    ws = await open_ws(url, on_data)
    start = time.perf_counter()
    ws.sendMessage(b"D" + total.to_bytes(8, "big"), isBinary=True)
    await done
    elapsed = time.perf_counter() - start
    ws.sendClose()
    return total / elapsed / (1024 * 1024)


async def run(urls: dict, mib: int, rounds: int) -> dict:
    total = mib * 1024 * 1024
    results = {}
    for name, url in urls.items():
        up = [await measure_upload(url(), total) for _ in range(2)]
        down = [await measure_download(url(), total) for _ in range(2)]
        latency = await measure_latency(url(), rounds)
        results[name] = {"upload_mib_s": round(max(up), 1), "download_mib_s": round(max(down), 1),
                         "latency": latency}
    s, w = results["streamspace"], results["websockify"]
    results["ratio_streamspace_over_websockify"] = {
        "upload": round(s["upload_mib_s"] / w["upload_mib_s"], 2),
        "download": round(s["download_mib_s"] / w["download_mib_s"], 2),
        "latency_p50": round(s["latency"]["p50_ms"] / w["latency"]["p50_ms"], 2),
        "latency_p99": round(s["latency"]["p99_ms"] / w["latency"]["p99_ms"], 2),
    }
    results["config"] = {"message_bytes": MSG, "mib_per_direction": mib, "cpus": os.cpu_count(),
                         "path_streamspace": "client -> control plane -> agent -> target",
                         "path_websockify": "client -> websockify -> target"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    harness = Harness()
    try:
        urls = harness.setup()
        outcome = {}

        async def go():
            try:
                outcome["result"] = await run(urls, args.mib, args.rounds)
            finally:
                reactor.stop()

        reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(go()))
        reactor.run()
        print(json.dumps(outcome.get("result", {"error": "benchmark failed"}), indent=2))
    finally:
        harness.close()


if __name__ == "__main__":
    main()
