"""How long Docker sessions take: start (to RFB), hibernate and wake in both modes, stop,
and a burst of concurrent starts, with the real driver on the suite's private dockerd and
the real session image. Prints one JSON object (seconds; medians and maxima).

Usage: .venv/bin/python bench/docker_sessions.py [--sessions N] [--burst N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

from twisted.internet import defer, reactor, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.platforms.base import UserRef  # noqa: E402
from tests.support.docker_sessions import DockerHarness, session_image  # noqa: E402
from tests.support.dockerd import shared_engine  # noqa: E402

USER = UserRef("bench", "bench")


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 3), "max": round(max(samples), 3),
            "n": len(samples)}


async def timed(samples: list[float], d: defer.Deferred) -> None:
    began = reactor.seconds()
    await d
    samples.append(reactor.seconds() - began)


async def measure(harness: DockerHarness, sessions: int, burst: int) -> dict:
    driver = await harness.started()
    results: dict[str, list[float]] = {k: [] for k in (
        "start", "hibernate_stop", "wake_stop", "hibernate_pause", "wake_pause", "stop")}
    for mode in ("stop", "pause"):
        template = harness.template(docker={"hibernate": mode})
        for i in range(sessions):
            sid = f"bench-{mode}-{i}"
            await timed(results["start"], driver.start_session(sid, template, USER, ""))
            await timed(results[f"hibernate_{mode}"], driver.hibernate_session(sid))
            await timed(results[f"wake_{mode}"], driver.wake_session(sid, template, None))
            await timed(results["stop"], driver.stop_session(sid))
    template = harness.template()
    began = reactor.seconds()
    await defer.gatherResults([driver.start_session(f"burst-{i}", template, USER, "")
                               for i in range(burst)])
    burst_seconds = reactor.seconds() - began
    await defer.gatherResults([driver.stop_session(f"burst-{i}") for i in range(burst)])
    await harness.shutdown()
    out = {k: summary(v) for k, v in results.items()}
    out[f"burst_{burst}_concurrent_starts"] = round(burst_seconds, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--burst", type=int, default=8)
    args = parser.parse_args()
    with shared_engine() as engine:
        harness = DockerHarness(engine, session_image(engine), agent_id="bench")
        try:  # react() ends with SystemExit: the engine still stops on the way out
            task.react(lambda _r: defer.ensureDeferred(
                _run(harness, args.sessions, args.burst)), [])
        finally:
            with contextlib.suppress(Exception):
                harness.cleanup()


async def _run(harness: DockerHarness, sessions: int, burst: int) -> None:
    result = await measure(harness, sessions, burst)
    result["engine"] = harness.engine.api("GET", "/version")[1].get("Version")
    print(json.dumps({"benchmark": "docker_sessions", **result}, indent=2))


if __name__ == "__main__":
    main()
