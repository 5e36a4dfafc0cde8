"""What a driver's tests give the contract suite (tests/integration/agent/
test_driver_contract.py): how to build the driver, a cheap template, and ground truth
read from outside the driver (the process table, the Docker daemon, the Kubernetes API).

To add a driver: write a `DriverHarness` subclass next to the driver's own tests and name
it in `HARNESSES` in test_driver_contract.py. The suite builds one harness per module and,
from it, one long-lived driver plus the few extra instances a restart needs. A harness
whose prerequisites are missing must fail in `setup`, never skip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from agent.platforms.base import Capacity, PlatformDriver, SessionTemplate, UserRef


class DriverHarness(ABC):
    #: the driver reports progress (`report_progress`) while a session starts
    reports_start_progress: bool = False
    user = UserRef("u-contract", "contract")

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    async def setup(self) -> None:  # noqa: B027 (optional hook)
        """Start what the driver needs (a fake API server, a test VNC server...)."""

    async def teardown(self) -> None:  # noqa: B027 (optional hook)
        """Stop what `setup` started."""

    @abstractmethod
    def make(self, capacity: Capacity) -> PlatformDriver:
        """A new driver on the same platform and state, as a restarted agent builds it.
        The suite calls `start()` on it, and may change `driver.capacity` later."""

    @abstractmethod
    def template(self) -> SessionTemplate:
        """The cheapest template that really runs (cpu and memory_mb above 0)."""

    @abstractmethod
    def really_runs(self, session_id: str) -> bool:
        """Ground truth: something of this session runs on the platform (processes, a
        container, a ready pod), whatever the driver says."""

    @abstractmethod
    def home_of(self, driver: PlatformDriver, session_id: str) -> str:
        """What identifies the state a wake must find again (a home directory, a volume,
        a PVC name)."""

    @abstractmethod
    def end_session(self, driver: PlatformDriver, session_id: str) -> None:
        """Make a running session end by itself (kill its application, delete its pod)."""

    def hold_next_start(self, driver: PlatformDriver) -> Callable[[], None]:
        """Make the next start take a while (so it can be cancelled half-way); returns
        the release. Real platforms take a while anyway: the default does nothing."""
        return lambda: None

    def abandon(self, driver: PlatformDriver) -> None:
        """The agent dies without `shutdown()`: the instance is simply dropped."""
        driver.set_status_listener(None)
        driver.set_progress_listener(None)

    @abstractmethod
    def leftovers(self) -> list[str]:
        """After the module: whatever still runs for this harness, cleaned up (must be
        empty)."""
