"""Docker driver tests: the suite's private dockerd (tests/support/dockerd.py), the session
image built on it once per run, and a harness per test that leaves no container behind."""

from __future__ import annotations

import pytest

from tests.integration.agent.conftest import block
from tests.support.docker_sessions import DockerHarness
from tests.support.docker_sessions import session_image as build_session_image
from tests.support.dockerd import (
    blocking,
    dockerd,  # noqa: F401 - the shared session fixture
)


@pytest.fixture(scope="session")
def session_image(dockerd):  # noqa: F811 - the imported fixture, requested here
    return blocking(build_session_image, dockerd)


@pytest.fixture
def docker(dockerd, session_image):  # noqa: F811
    """Drivers under a fresh agent id; afterwards no container of it may be left."""
    harness = DockerHarness(dockerd, session_image)
    yield harness
    block(harness.shutdown())
    left = blocking(harness.cleanup)
    assert not left["containers"], f"containers left behind: {left['containers']}"
