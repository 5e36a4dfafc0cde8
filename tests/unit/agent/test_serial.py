"""Per-key serial queues: arrival order, errors relayed, and no recursion at any depth."""

import pytest
from twisted.internet import defer

from agent.serial import SerialQueues


def test_jobs_of_one_key_run_in_order_others_do_not_wait():
    queues, ran = SerialQueues(), []
    gate = defer.Deferred()

    def job(name, wait=None):
        def run():
            ran.append(name)
            return wait
        return run

    first = queues.run("a", job("a1", gate))
    second = queues.run("a", job("a2"))
    other = queues.run("b", job("b1"))
    assert ran == ["a1", "b1"] and other.called and not second.called
    gate.callback("done")
    assert ran == ["a1", "b1", "a2"]
    assert first.result == "done" and second.called
    assert not queues.busy("a") and len(queues) == 0


def test_a_failing_job_fails_its_own_result_only():
    queues = SerialQueues()

    def boom():
        raise ValueError("bad")

    failed = queues.run("k", boom)
    after = queues.run("k", lambda: 7)
    with pytest.raises(ValueError):
        failed.result.raiseException()
    failed.addErrback(lambda f: None)
    assert after.result == 7


def test_a_hundred_thousand_queued_jobs_do_not_recurse():
    queues, gate, done = SerialQueues(), defer.Deferred(), []
    queues.run("k", lambda: gate)
    results = [queues.run("k", lambda i=i: done.append(i)) for i in range(100_000)]
    gate.callback(None)
    assert done == list(range(100_000)) and all(r.called for r in results)


def test_work_queued_from_a_result_callback_waits_its_turn():
    queues, ran, gate = SerialQueues(), [], defer.Deferred()
    first = queues.run("k", lambda: gate)
    first.addCallback(lambda _: queues.run("k", lambda: ran.append(3)))
    queues.run("k", lambda: ran.append(2))
    gate.callback(ran.append(1))
    assert ran == [1, 2, 3] and len(queues) == 0
