"""One-at-a-time execution per key, in arrival order, at any burst size.

`DeferredLock` hands the lock to the next waiter from inside `release()`, so a queue of
jobs that finish synchronously nests one call stack per waiter and a few hundred of them
end in RecursionError (issue 9: a burst of commands for one session never finished). Here
the queue is drained by a loop: a job that finishes at once lets the loop take the next,
one that waits resumes the loop from its own callback, so the stack depth stays constant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

Job = Callable[[], Any]


class SerialQueues:
    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[Job, defer.Deferred]]] = {}

    def run(self, key: str, job: Job) -> defer.Deferred:
        """Run `job()` once every job queued before it under `key` has finished; the
        result fires with what the job returned (or raised)."""
        result: defer.Deferred = defer.Deferred()
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((job, result))
            return result
        queue = self._queues[key] = deque([(job, result)])
        self._drain(key, queue)
        return result

    def busy(self, key: str) -> bool:
        return key in self._queues

    def __len__(self) -> int:
        return len(self._queues)

    def _drain(self, key: str, queue: deque[tuple[Job, defer.Deferred]]) -> None:
        while queue:
            job, result = queue[0]
            d = defer.maybeDeferred(job)
            if not d.called:
                d.addBoth(self._finished, key, queue)
                return
            queue.popleft()
            d.chainDeferred(result)  # may queue more work under `key`: the loop takes it
        del self._queues[key]

    def _finished(self, outcome: Any, key: str, queue: deque[tuple[Job, defer.Deferred]]
                  ) -> None:
        _job, result = queue.popleft()
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
        self._drain(key, queue)
