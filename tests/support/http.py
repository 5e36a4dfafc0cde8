"""Small helpers for tests that talk HTTP to a real listening server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater


async def get_json(url: str, **kwargs) -> tuple[int, Any]:
    response = await treq.get(url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


async def poll(check, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Await `check()` until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = reactor.seconds() + timeout
    last = None
    while reactor.seconds() < deadline:
        last = await check()
        if last:
            return last
        await deferLater(reactor, interval, lambda: None)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_http(url: str, timeout: float = 60.0, want_status: int = 200) -> tuple[int, bytes]:
    """Blocking poll for tests that drive subprocesses (no reactor involved)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read()
                if r.status == want_status:
                    return r.status, body
                last = r.status
        except urllib.error.HTTPError as e:
            last = (e.code, e.read())
            if e.code == want_status:
                return e.code, last[1]
        except OSError as e:
            last = e
        time.sleep(0.1)  # polling a subprocess from a plain blocking test, not reactor code
    raise AssertionError(f"{url} did not answer {want_status} within {timeout}s (last: {last!r})")
