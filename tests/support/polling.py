"""Waiting for conditions in reactor tests: poll with a deadline, never sleep-and-hope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
                what: str = "condition") -> Any:
    """Await a synchronous `check()` until truthy; fail after `timeout` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if value:
            return value
        if reactor.seconds() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)


async def settle(sample: Callable[[], Any], quiet: float = 0.2, timeout: float = 10.0,
                 interval: float = 0.01, observe: Callable[[], None] | None = None) -> Any:
    """Await until `sample()` has not changed for `quiet` seconds (e.g. a stalled flood).

    `observe` runs on every tick, to record maxima while waiting.
    """
    deadline = reactor.seconds() + timeout
    last, since = sample(), reactor.seconds()
    while True:
        if observe is not None:
            observe()
        await deferLater(reactor, interval, lambda: None)
        now, value = reactor.seconds(), sample()
        if value != last:
            last, since = value, now
        elif now - since >= quiet:
            return value
        if now >= deadline:
            raise AssertionError(f"{sample} kept changing for {timeout}s")


def sleep(seconds: float):
    """For the rare test that must let real time pass (e.g. proving nothing happens)."""
    return deferLater(reactor, seconds, lambda: None)
