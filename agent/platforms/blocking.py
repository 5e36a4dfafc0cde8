"""A small thread pool for the local platform's blocking work, off the reactor.

Scans of the whole process table (/proc), name-service lookups (`pwd`, which may ask LDAP
or sssd over the network), and deleting or re-owning large home trees can each take long
enough to stall every session's VNC relay if run on the reactor thread. They run here
instead: two threads, shared by every local driver in the process, so such work is
bounded and never competes with the reactor's own default pool (DNS, other libraries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

THREADS = 2
_pool: ThreadPool | None = None


def _started(reactor) -> ThreadPool:
    global _pool
    if _pool is None:
        _pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="local-platform")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop)
    return _pool


def _stop() -> None:
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.stop()


def run(reactor, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Call `f(*args, **kwargs)` on the pool; the Deferred fires on the reactor thread."""
    return threads.deferToThreadPool(reactor, _started(reactor), f, *args, **kwargs)
