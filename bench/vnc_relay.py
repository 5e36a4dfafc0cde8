"""Benchmark: the full VNC path against websockify, same TCP target, same run, interleaved.

  viewer (autobahn client) --WS--> control plane --WS--> agent --TCP--> target
  viewer (autobahn client) --WS--> websockify ---------------------TCP--> target

Each repetition measures, for each path in turn, upload and download throughput (64 KiB
messages) and the round trip of 100-byte messages; the JSON gives the median of the
repetitions, every sample, the ratios of the medians, and the CPU seconds each of our
processes spent per MiB moved. The machine is shared: run it interleaved, read medians.

Run: .venv/bin/python -m bench.vnc_relay [--mib 64] [--rounds 2000] [--reps 5] [--short]
     [--profile DIR]  (py-spy on the control plane and agent during one long download)
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from bench.harness import (
    Harness,
    Product,
    median,
    process_usage,
    profile_summary,
    run_and_print,
    vnc_url,
)
from streamspace_common.wsframes import no_delay

MSG = 64 * 1024


class Client(WebSocketClientProtocol):
    def onOpen(self):
        no_delay(self.transport)  # as a browser does (Autobahn's own option never takes)
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.on_data(payload)

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"{code} {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))


async def open_ws(url: str, on_data):
    factory = WebSocketClientFactory(url, protocols=["binary"])
    factory.protocol = Client
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    factory.on_data = on_data
    factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0,
                               autoFragmentSize=0, tcpNoDelay=True, openHandshakeTimeout=30)
    connectWS(factory)
    return await factory.opened


async def measure_latency(url: str, rounds: int) -> dict:
    got = defer.Deferred()
    pending = bytearray()

    def on_data(data):
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
    return {"p50_ms": round(samples[len(samples) // 2], 3),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3)}


@implementer(IPushProducer)
class _Pump:
    """Sends `total` bytes as MSG-sized messages as fast as the socket takes them."""

    def __init__(self, ws, total: int) -> None:
        self.ws, self.left, self.paused = ws, total, False
        self.chunk = b"u" * MSG
        ws.transport.registerProducer(self, True)
        reactor.callLater(0, self._run)

    def _run(self):
        while not self.paused and self.left > 0:
            self.ws.sendMessage(self.chunk, isBinary=True)
            self.left -= MSG
        if self.left <= 0:
            self.ws.transport.unregisterProducer()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._run)

    def stopProducing(self):
        self.left = 0


async def measure_upload(url: str, total: int) -> float:
    done = defer.Deferred()
    ws = await open_ws(url, lambda data: done.called or done.callback(None))
    start = time.perf_counter()
    ws.sendMessage(b"U" + total.to_bytes(8, "big"), isBinary=True)
    _Pump(ws, total)
    await done
    elapsed = time.perf_counter() - start
    ws.sendClose()
    return total / elapsed / (1024 * 1024)


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


class CpuMeter:
    """CPU seconds spent by some processes between start() and per_mib(), per MiB moved."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _now(self) -> dict[str, float]:
        # this process spawned the others: count only its own threads
        return {n: process_usage(p, children=p != os.getpid())["cpu_seconds"]
                for n, p in self.pids.items()}

    def start(self) -> None:
        self.before = self._now()

    def per_mib(self, mib: float) -> dict[str, float]:
        now = self._now()
        return {n: round(1000 * (now[n] - self.before[n]) / mib, 3) for n in self.pids}


KEYS = ("upload", "download", "p50", "p99", "upload_cpu_ms_per_mib", "download_cpu_ms_per_mib")


async def sample_path(url, cpu: CpuMeter, total: int, rounds: int, into: dict) -> None:
    mib = total / (1024 * 1024)
    for direction, measure in (("upload", measure_upload), ("download", measure_download)):
        target = await url()
        cpu.start()
        into[direction].append(await measure(target, total))
        into[f"{direction}_cpu_ms_per_mib"].append(cpu.per_mib(mib))
    latency = await measure_latency(await url(), rounds)
    into["p50"].append(latency["p50_ms"])
    into["p99"].append(latency["p99_ms"])


def summarise(samples: dict) -> dict:
    return {"upload_mib_s": median(samples["upload"]),
            "download_mib_s": median(samples["download"]),
            "latency_p50_ms": median(samples["p50"]), "latency_p99_ms": median(samples["p99"]),
            "upload_cpu_ms_per_mib": _median_each(samples["upload_cpu_ms_per_mib"]),
            "download_cpu_ms_per_mib": _median_each(samples["download_cpu_ms_per_mib"]),
            "samples": {k: samples[k] if "cpu" in k else [round(v, 3) for v in samples[k]]
                        for k in KEYS}}


def compare(ours: dict, ref: dict) -> dict:
    return {"ratio_over_websockify": {
                "upload": round(ours["upload_mib_s"] / ref["upload_mib_s"], 2),
                "download": round(ours["download_mib_s"] / ref["download_mib_s"], 2),
                "latency_p50": round(ours["latency_p50_ms"] / ref["latency_p50_ms"], 2),
                "latency_p99": round(ours["latency_p99_ms"] / ref["latency_p99_ms"], 2)},
            "added_latency_ms": {
                "p50": round(ours["latency_p50_ms"] - ref["latency_p50_ms"], 3),
                "p99": round(ours["latency_p99_ms"] - ref["latency_p99_ms"], 3)}}


async def run(products: list[Product], ws_port: int, mib: int, rounds: int, reps: int,
              profile: Path | None, h: Harness) -> dict:
    total = mib * 1024 * 1024

    async def reference():
        return f"ws://127.0.0.1:{ws_port}/"

    # the viewer (this process) and the target cost the same on every path: shown for scale
    common = {"viewer": os.getpid(), "target": h.pid("target")}
    paths = {"websockify": (reference, CpuMeter({"websockify": h.pid("websockify"),
                                                 **common}))}
    for product in products:
        paths[product.name] = (lambda p=product: vnc_url(p),
                               CpuMeter({**product.pids(), **common}))
    samples = {name: {k: [] for k in KEYS} for name in paths}
    order = list(paths)
    shuffle = random.Random(1)
    for _ in range(reps):  # interleaved: every path once per repetition, in a new order
        shuffle.shuffle(order)
        for name in order:
            url, cpu = paths[name]
            await sample_path(url, cpu, total, rounds, samples[name])
    results: dict = {name: summarise(s) for name, s in samples.items()}
    for product in products:
        results[product.name].update(compare(results[product.name], results["websockify"]))
    if profile is not None:
        ours = products[0]
        seconds = 8
        spies = h.start_profiles(ours, profile, seconds)
        deadline = time.monotonic() + seconds + 1
        while time.monotonic() < deadline:
            await measure_download(await vnc_url(ours), total)
        for spy in spies:
            while spy.poll() is None:
                await _later(0.2)
        results["profile_download_self_time"] = {
            name: profile_summary(profile / f"{name}.txt") for name in ours.pids()}
    results["config"] = {"message_bytes": MSG, "mib_per_direction": mib, "reps": reps,
                         "latency_rounds": rounds, "cpus": os.cpu_count(),
                         "load_average": [round(x, 2) for x in os.getloadavg()],
                         "path_streamspace": "client -> control plane -> agent -> target",
                         "path_websockify": "client -> websockify -> target"}
    return results


def _median_each(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([d[k] for d in dicts]) for k in dicts[0]} if dicts else {}


def _later(seconds: float) -> defer.Deferred:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--short", action="store_true", help="a quick run (make bench)")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. a git worktree of an older commit) to "
                             "measure in the same run, as `baseline`")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="more checkouts to measure in the same run")
    args = parser.parse_args()
    if args.short:
        args.mib, args.rounds, args.reps = 16, 500, 2
    h = Harness()
    try:
        target = h.start_tcp_target()
        products = [h.start_product(target)]
        if args.baseline is not None:
            products.append(h.start_product(target, "baseline", args.baseline.resolve()))
        for variant in args.variant:
            name, _, where = variant.partition("=")
            products.append(h.start_product(target, name, Path(where).resolve()))
        ws_port = h.start_websockify(target)
        run_and_print(lambda: run(products, ws_port, args.mib, args.rounds, args.reps,
                                  args.profile, h))
    finally:
        h.close()


if __name__ == "__main__":
    main()
