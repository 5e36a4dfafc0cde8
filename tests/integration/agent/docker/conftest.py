"""Docker driver tests: the suite's private dockerd (tests/support/dockerd.py), the session
image built on it once per run, and a harness per test that leaves no container behind
(tests/support/docker_sessions.py)."""

from __future__ import annotations

import pytest

from tests.support.docker_sessions import (  # noqa: F401 - fixtures used by the tests here
    docker_harness,
    docker_session_image,
)
from tests.support.dockerd import dockerd  # noqa: F401 - the shared session fixture


@pytest.fixture
def session_image(docker_session_image):  # noqa: F811 - the imported fixture
    return docker_session_image


@pytest.fixture
def docker(docker_harness):  # noqa: F811 - the imported fixture
    return docker_harness
