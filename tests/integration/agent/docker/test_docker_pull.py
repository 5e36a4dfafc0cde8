"""Image pulls for real: a registry on loopback (Debian's docker-registry, the reference
`distribution` server) serves an image the suite pushed; the driver's start pulls it and
reports the engine's own progress stream as percentages before the container exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from agent.platforms.base import DriverError, UserRef
from tests.support.dockerd import tiny_image
from tests.support.http import wait_http
from tests.support.processes import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory, dockerd):
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed (Debian package docker-registry; "
                           "`make setup-test` installs it as root)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    log.close()
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=20)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def push_image(dockerd, registry: str, tmp_path) -> str:
    """A few-megabyte image plus 24 MiB of incompressible data (so the pull has progress
    to report), pushed to the loopback registry and removed from the engine."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "blob").write_bytes(os.urandom(24 << 20))
    (context / "Dockerfile").write_text(f"FROM {tiny_image(dockerd)}\nCOPY blob /blob\n")
    ref = f"{registry}/streamspace/pull-test:{int(time.time() * 1000)}"
    dockerd.cli("build", "-t", ref, str(context), env={"DOCKER_BUILDKIT": "0"})
    dockerd.cli("push", ref)
    dockerd.cli("image", "rm", ref)
    assert not dockerd.image_exists(ref)
    return ref


@pytest_twisted.ensureDeferred
async def test_a_start_pulls_its_image_with_progress(docker, registry, tmp_path):
    ref = await threads.deferToThread(push_image, docker.engine, registry, tmp_path)
    driver = await docker.started()
    template = docker.template(docker={"image": ref, "entrypoint": ["/bin/true"]})
    try:
        with pytest.raises(DriverError, match="exited at start with code 0"):
            await driver.start_session("p1", template, UserRef("u1", "ann"), "")
        assert docker.engine.image_exists(ref)  # pulled for real
        messages = [m for sid, m in docker.progress if sid == "p1"]
        assert messages[0] == f"pulling image {ref}"
        percents = [int(m.rsplit(" ", 1)[1].rstrip("%")) for m in messages
                    if re.fullmatch(rf"pulling image {re.escape(ref)}: \d+%", m)]
        assert percents and percents == sorted(percents) and percents[-1] == 100, messages
        assert messages.index(f"pulled image {ref}") < messages.index("container created")
    finally:
        await threads.deferToThread(docker.engine.cli, "image", "rm", "--force", ref)
