"""Deploy tests: a real, private Docker engine (tests/support/dockerd.py)."""

from tests.support.dockerd import dockerd  # noqa: F401 - the shared session fixture
