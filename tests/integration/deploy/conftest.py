"""Deploy tests: a real, private Docker engine (tests/support/dockerd.py) and the images
built on it once per run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.dockerd import (
    base_image,
    blocking,
    dockerd,  # noqa: F401 - the shared session fixture
)
from tests.support.k8s_binaries import helm, kubectl  # noqa: F401 - session fixtures
from tests.support.processes import REPO

IMAGE_TAG = "test"


def _build_images(engine) -> dict[str, str]:
    """Both images, built the way operators build them (deploy/docker/build.py) on the
    debootstrapped base; the engine's kept layer cache makes an unchanged rebuild quick."""
    started = time.monotonic()
    base = base_image(engine)
    based = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "deploy/docker/build.py"), "--tag",
                             IMAGE_TAG, "--base-image", base], env=engine.env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    print(f"\nimages: base {based - started:.1f}s, build {time.monotonic() - based:.1f}s")
    return {name: f"streamspace/{name}:{IMAGE_TAG}" for name in ("control-plane", "agent")}


@pytest.fixture(scope="session")
def images(dockerd):  # noqa: F811 - the imported fixture, requested here
    return blocking(_build_images, dockerd)
