"""The driver contract (agent/platforms/base.py, PlatformDriver's docstring), one suite
run against every driver through its harness (contract/harness.py). Ground truth comes
from the harness (the process table, the platform's API), never from the driver alone.

Cheap on purpose: per driver one harness and one long-lived driver for the module, one
running session reused by the tests that only look at it; a few more instances only
where the behaviour is about a restart (start() after a crash, shutdown()).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from agent.platforms.base import (
    HIBERNATED,
    RUNNING,
    STARTING,
    Capacity,
    CapacityError,
    DriverError,
    PlatformDriver,
)
from tests.integration.agent.conftest import block
from tests.integration.agent.contract.harness import DriverHarness
from tests.support.polling import until

pytestmark = pytest.mark.slow

# Every driver's harness (tests/integration/agent/contract/).
HARNESSES = {
    "local": "tests.integration.agent.contract.local:LocalHarness",
    "kubernetes": "tests.integration.agent.contract.kubernetes:KubernetesHarness",
    "docker": "tests.integration.agent.contract.docker:DockerHarness",
    "fake": "tests.integration.agent.contract.fake:FakeHarness",
    "fake-outliving": "tests.integration.agent.contract.fake:OutlivingFakeHarness",
}

SHARED = "contract-shared"  # the session the looking-only tests reuse


@dataclass
class Heard:
    """What the driver told the agent through its listeners."""

    statuses: list[tuple[str, str, str]] = field(default_factory=list)
    progress: list[tuple[str, str]] = field(default_factory=list)


def listen(driver: PlatformDriver) -> Heard:
    heard = Heard()
    driver.set_status_listener(lambda *a: heard.statuses.append(a))
    driver.set_progress_listener(lambda *a: heard.progress.append(a))
    return heard


@pytest.fixture(scope="module", params=sorted(HARNESSES))
def harness(request, tmp_path_factory):
    module, name = HARNESSES[request.param].split(":")
    h: DriverHarness = getattr(importlib.import_module(module), name)(
        tmp_path_factory.mktemp(f"contract-{request.param}"))
    block(h.setup())
    yield h
    try:
        left = h.leftovers()
    finally:
        block(h.teardown())
    assert not left, f"left running after the contract suite: {left}"


@dataclass
class Subject:
    harness: DriverHarness
    driver: PlatformDriver
    heard: Heard

    def states(self) -> dict[str, str]:
        return {s.session_id: s.state for s in self.driver.list_sessions()}

    async def start(self, session_id: str) -> None:
        await self.driver.start_session(session_id, self.harness.template(),
                                        self.harness.user, "contract")

    async def clear(self) -> None:
        """Stop every session of the module's driver: the restart tests below build more
        drivers on the same platform, whose start() may reap (local) or find them."""
        for info in self.driver.list_sessions():
            await self.driver.stop_session(info.session_id)

    async def running(self, session_id: str = SHARED) -> str:
        """`session_id` running (started now if an earlier test ended it)."""
        if self.states().get(session_id) != RUNNING:
            await self.start(session_id)
        return session_id


async def started(h: DriverHarness, capacity: Capacity | None = None) -> PlatformDriver:
    driver = h.make(capacity or Capacity())
    await defer.maybeDeferred(driver.start)
    return driver


@pytest.fixture(scope="module")
def subject(harness):
    driver = block(started(harness))
    subject = Subject(harness, driver, listen(driver))
    yield subject
    block(driver.shutdown())
    if driver.outlives_agent:  # its sessions are still there: stop them for the next
        for info in driver.list_sessions():
            block(driver.stop_session(info.session_id))


async def rfb_banner(driver: PlatformDriver, session_id: str) -> bytes:
    """Connect where the driver says, read the server's first 12 bytes."""
    endpoint = await driver.vnc_endpoint(session_id)
    got: defer.Deferred[bytes] = defer.Deferred()

    class Banner(protocol.Protocol):
        buffer = b""

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            if len(self.buffer) >= 12 and not got.called:
                got.callback(self.buffer[:12])
                self.transport.loseConnection()

    await endpoint.connect(protocol.Factory.forProtocol(Banner))
    return await got.addTimeout(10, reactor)


def assert_sentence(text: str) -> None:
    """A reason a user reads: words, not a repr or an exception name."""
    assert isinstance(text, str) and len(text.split()) >= 4, text
    assert "Error" not in text and "Traceback" not in text, text


# -- a running session ------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_started_session_is_running_counted_and_really_runs(subject):
    sid = await subject.running()
    assert subject.states()[sid] == RUNNING
    assert subject.harness.really_runs(sid)
    usage = subject.driver.usage()
    template = subject.harness.template()
    assert usage.sessions >= 1 and usage.cpu >= template.cpu
    assert usage.memory_gb >= template.memory_mb / 1024


@pytest_twisted.ensureDeferred
async def test_vnc_endpoint_reaches_the_sessions_rfb_server(subject):
    sid = await subject.running()
    assert (await rfb_banner(subject.driver, sid)).startswith(b"RFB 003.")


@pytest_twisted.ensureDeferred
async def test_an_unknown_sessions_vnc_endpoint_fails_with_a_sentence(subject):
    with pytest.raises(DriverError) as refused:
        await subject.driver.vnc_endpoint("contract-never-started")
    assert_sentence(str(refused.value))


@pytest_twisted.ensureDeferred
async def test_capacity_refusals_are_sentences_and_start_nothing(subject):
    await subject.running()
    usage, template = subject.driver.usage(), subject.harness.template()
    full = {
        "MAX_SESSIONS": Capacity(max_sessions=usage.sessions),
        "MAX_CPU": Capacity(max_cpu=usage.cpu + template.cpu / 2),
        "MAX_MEMORY": Capacity(max_memory_gb=usage.memory_gb + template.memory_mb / 2048),
    }
    kept = subject.driver.capacity
    try:
        for limit, capacity in full.items():
            subject.driver.capacity = capacity
            with pytest.raises(CapacityError) as refused:
                await subject.start("contract-over")
            assert limit in str(refused.value)
            assert_sentence(str(refused.value))
    finally:
        subject.driver.capacity = kept
    assert "contract-over" not in subject.states()
    assert not subject.harness.really_runs("contract-over")
    assert subject.driver.usage() == usage


@pytest_twisted.ensureDeferred
async def test_hibernate_reserves_nothing_and_wake_runs_on_the_same_home(subject):
    sid = await subject.running()
    home = subject.harness.home_of(subject.driver, sid)
    before = subject.driver.usage()
    await subject.driver.hibernate_session(sid)
    assert subject.states()[sid] == HIBERNATED
    assert not subject.harness.really_runs(sid)
    after = subject.driver.usage()
    assert after.sessions == before.sessions - 1
    assert after.cpu == pytest.approx(before.cpu - subject.harness.template().cpu)
    with pytest.raises(DriverError):
        await subject.driver.vnc_endpoint(sid)
    await subject.driver.wake_session(sid, subject.harness.template(), None)
    assert subject.states()[sid] == RUNNING and subject.harness.really_runs(sid)
    assert subject.harness.home_of(subject.driver, sid) == home
    assert (await rfb_banner(subject.driver, sid)).startswith(b"RFB 003.")


@pytest_twisted.ensureDeferred
async def test_stop_leaves_nothing_and_is_idempotent(subject):
    sid = await subject.running()
    before = subject.driver.usage()
    await subject.driver.stop_session(sid)
    assert sid not in subject.states()
    await until(lambda: not subject.harness.really_runs(sid), 10, what="the session gone")
    assert subject.driver.usage().sessions == before.sessions - 1
    await subject.driver.stop_session(sid)  # redelivered, or already gone: still fine
    await subject.driver.stop_session("contract-never-started")


# -- starts that do not finish, sessions that end by themselves -------------------------

@pytest_twisted.ensureDeferred
async def test_a_start_cancelled_half_way_leaves_nothing_running(subject):
    sid = "contract-cancelled"
    release = subject.harness.hold_next_start(subject.driver)
    try:
        starting = subject.driver.start_session(sid, subject.harness.template(),
                                                subject.harness.user, "")
        assert subject.states().get(sid) == STARTING  # listed while it comes up
        assert subject.driver.usage().sessions >= 1  # and it reserves its resources
        starting.cancel()
        with pytest.raises(defer.CancelledError):  # what the executor expects at a deadline
            await starting
    finally:
        release()
    assert sid not in subject.states()
    assert not subject.harness.really_runs(sid)


@pytest_twisted.ensureDeferred
async def test_a_session_ending_by_itself_is_reported_with_a_reason(subject):
    sid = "contract-ends"
    await subject.start(sid)
    subject.harness.end_session(subject.driver, sid)
    status = await until(lambda: [s for s in subject.heard.statuses if s[0] == sid], 15,
                         what="a status for the session that ended")
    _, state, reason = status[0]
    assert state in ("stopped", "failed")
    assert_sentence(reason)
    await until(lambda: sid not in subject.states(), 10, what="the ended session unlisted")
    await until(lambda: not subject.harness.really_runs(sid), 10, what="nothing left of it")
    await subject.driver.stop_session(sid)  # the control plane may still send a stop


def test_progress_names_real_sessions_in_sentences(subject):
    """Runs after the starts above: what the progress listener heard is about sessions
    this module started, in words; drivers that report progress did so."""
    for session_id, message in subject.heard.progress:
        assert session_id.startswith("contract-"), session_id
        assert message.strip() and len(message) <= 500
    if subject.harness.reports_start_progress:
        assert {SHARED, "contract-ends"} <= {sid for sid, _ in subject.heard.progress}


# -- restarts -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_start_after_a_crash_reaps_or_finds_again_by_the_drivers_policy(
        harness, subject):
    await subject.clear()
    crashed = await started(harness)
    await crashed.start_session("contract-crash", harness.template(), harness.user, "")
    await crashed.start_session("contract-kept", harness.template(), harness.user, "")
    await crashed.hibernate_session("contract-kept")
    harness.abandon(crashed)  # the agent is killed: no shutdown()

    fresh = await started(harness)  # start() returned: what runs is known or reaped
    states = {s.session_id: s.state for s in fresh.list_sessions()}
    assert states.get("contract-kept") == HIBERNATED  # kept for a wake, on every platform
    if fresh.outlives_agent:
        assert states.get("contract-crash") == RUNNING
        assert harness.really_runs("contract-crash")
        assert (await rfb_banner(fresh, "contract-crash")).startswith(b"RFB 003.")
    else:
        assert "contract-crash" not in states
        await until(lambda: not harness.really_runs("contract-crash"), 10,
                    what="the dead agent's session reaped")
    for sid in ("contract-crash", "contract-kept"):
        await fresh.stop_session(sid)
    assert fresh.list_sessions() == []


@pytest_twisted.ensureDeferred
async def test_shutdown_follows_outlives_agent(harness, subject):
    await subject.clear()
    driver = await started(harness)
    heard = listen(driver)
    await driver.start_session("contract-shutdown", harness.template(), harness.user, "")
    stopped = await driver.shutdown()
    if driver.outlives_agent:
        assert stopped == [] and harness.really_runs("contract-shutdown")
        again = await started(harness)
        assert {s.session_id: s.state for s in again.list_sessions()} == {
            "contract-shutdown": RUNNING}
        await again.stop_session("contract-shutdown")
    else:
        assert stopped == ["contract-shutdown"]
        await until(lambda: not harness.really_runs("contract-shutdown"), 10,
                    what="the session stopped with its agent")
        assert driver.list_sessions() == []
    assert heard.statuses == []  # the agent reports these itself (agent/service.py)
