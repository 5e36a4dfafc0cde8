"""Soak: 10,000 VNC connect/disconnect cycles against one session, through the product.

  viewer --WS--> control plane --WS--> agent --TCP--> target (echo)

Each cycle asks the API for a fresh single-use VNC token, opens the viewer's WebSocket,
proves the tunnel works (a few bytes echoed by the target), and closes it. After a warm-up
(one-time allocations: imports, caches, pools), the RSS and open descriptors of the control
plane and the agent are read before the cycles, half-way and after them, each time once
both processes are idle again (queued database writes done). A leak grows by about as
much in the second half as in the first; memory the allocator keeps does not.
Targets: RSS growth under 10 MB, no descriptor leaked. Prints JSON.

Run: .venv/bin/python -m bench.vnc_soak [--cycles 10000] [--concurrency 8] [--short]
"""

from __future__ import annotations

import argparse
import os
import time

from twisted.internet import defer, reactor

from bench.harness import Harness, Product, process_usage, run_and_print, vnc_url
from bench.vnc_relay import open_ws

RSS_TARGET = 10 * 1000 * 1000


async def cycle(product: Product) -> None:
    got = defer.Deferred()
    ws = await open_ws(await vnc_url(product), lambda data: got.called or got.callback(data))
    ws.sendMessage(b"Esoak", isBinary=True)
    got.addTimeout(30, reactor)
    await got
    ws.sendClose()
    ws.factory.closed.addTimeout(30, reactor)
    await ws.factory.closed


async def cycles(product: Product, n: int, concurrency: int) -> int:
    """Runs `n` cycles, `concurrency` at a time; returns how many failed."""
    left, failed = [n], [0]

    async def worker():
        while left[0] > 0:
            left[0] -= 1
            try:
                await cycle(product)
            except Exception:
                failed[0] += 1

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker())
                               for _ in range(concurrency)])
    return failed[0]


def usage(product: Product) -> dict:
    return {name: process_usage(pid) for name, pid in product.pids().items()}


async def sleep(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def idle(product: Product, timeout: float = 60.0) -> None:
    """Until both processes use under 2% of a CPU over a second (or `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = usage(product)
        await sleep(1.0)
        after = usage(product)
        if all(after[n]["cpu_seconds"] - before[n]["cpu_seconds"] < 0.02 for n in after):
            return


async def run(product: Product, n: int, warmup: int, concurrency: int) -> dict:
    warmup_failed = await cycles(product, warmup, concurrency)
    await idle(product)  # closes, audit writes and vnc_disconnect answers finish
    before = usage(product)
    start = time.perf_counter()
    failed = await cycles(product, n // 2, concurrency)
    elapsed = time.perf_counter() - start
    await idle(product)
    middle = usage(product)
    start = time.perf_counter()
    failed += await cycles(product, n - n // 2, concurrency)
    elapsed += time.perf_counter() - start
    await idle(product)
    after = usage(product)
    result: dict = {"cycles": n, "failed": failed, "warmup_cycles": warmup,
                    "warmup_failed": warmup_failed, "concurrency": concurrency,
                    "seconds": round(elapsed, 1), "cycles_per_s": round(n / elapsed, 1)}
    for name in before:
        growth = after[name]["rss_bytes"] - before[name]["rss_bytes"]
        fds = after[name]["open_fds"] - before[name]["open_fds"]
        result[name] = {"rss_before_mb": round(before[name]["rss_bytes"] / 1e6, 1),
                        "rss_half_way_mb": round(middle[name]["rss_bytes"] / 1e6, 1),
                        "rss_after_mb": round(after[name]["rss_bytes"] / 1e6, 1),
                        "rss_growth_mb": round(growth / 1e6, 2),
                        "fds_before": before[name]["open_fds"],
                        "fds_after": after[name]["open_fds"], "fds_leaked": fds,
                        "meets_target": growth < RSS_TARGET and fds <= 0}
    result["config"] = {"cpus": os.cpu_count(),
                        "load_average": [round(x, 2) for x in os.getloadavg()],
                        "rss_target_mb": RSS_TARGET / 1e6}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--short", action="store_true", help="a quick run (make bench)")
    args = parser.parse_args()
    if args.short:
        args.cycles, args.warmup = 500, 100
    h = Harness()
    try:
        product = h.start_product(h.start_tcp_target(),
                                  env={"MAX_VIEWERS_PER_SESSION": "100",
                                       "MAX_VIEWERS_PER_USER": "100"})
        run_and_print(lambda: run(product, args.cycles, args.warmup, args.concurrency))
    finally:
        h.close()


if __name__ == "__main__":
    main()
