"""The suite's private Docker engine (tests/support/dockerd.py) does what its users rely on:
containers on the host network, its own roots, recovery from a run killed halfway, and
nothing of it left after it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.dockerd import DockerEngine, tiny_image
from tests.support.processes import alive


@pytest.fixture
def spare_engine(tmp_path):
    """A second, throw-away engine beside the run's shared one (distinct roots, socket)."""
    short = Path(f"/tmp/ssd-test-{os.getpid()}-{tmp_path.name[-6:]}")
    engine = DockerEngine(data_root=tmp_path / "data", run_dir=short, persistent=False)
    yield engine
    engine.stop()
    assert not engine.processes() and not engine.mounts()


def test_containers_run_on_the_host_network_and_the_cli_sees_their_labels(dockerd):
    image = tiny_image(dockerd)
    name = "ss-test-labelled"
    dockerd.cli("run", "-d", "--name", name, "--network", "host", "--label",
                "streamspace.io/test=yes", image, "sleep", "300")
    try:
        listed = dockerd.cli("ps", "--filter", "label=streamspace.io/test=yes",
                             "--format", "{{.Names}}").stdout.split()
        assert listed == [name]
        info = dockerd.cli("inspect", name, "--format",
                           "{{.HostConfig.NetworkMode}} {{.State.Running}}").stdout.split()
        assert info == ["host", "true"]
        # The container shares the host's network namespace (so loopback is the host's).
        pid = int(dockerd.cli("inspect", name, "--format", "{{.State.Pid}}").stdout)
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    finally:
        dockerd.cli("rm", "--force", name)


def test_a_second_engine_has_its_own_roots_socket_and_containers(dockerd, spare_engine):
    spare_engine.start()
    assert spare_engine.socket != dockerd.socket and spare_engine.ping() and dockerd.ping()
    image = tiny_image(spare_engine)
    spare_engine.cli("run", "-d", "--name", "ss-spare", "--network", "host", image,
                     "sleep", "300")
    assert [c["Names"] for c in spare_engine.containers()] == [["/ss-spare"]]
    assert "/ss-spare" not in [n for c in dockerd.containers() for n in c["Names"]]
    shim_pids = spare_engine.processes()
    assert len(shim_pids) >= 3  # dockerd, containerd, the container's shim
    spare_engine.stop()
    assert not spare_engine.processes() and not spare_engine.socket.exists()
    assert {p for p in shim_pids if alive(p)} == set()
    assert dockerd.ping()  # stopping one engine never touches another


def test_a_run_killed_halfway_is_cleaned_up_by_the_next(spare_engine):
    """The first engine is abandoned as a SIGKILLed pytest would leave it: dockerd running
    with a container. The next start on the same roots stops it and removes the container."""
    spare_engine.start()
    image = tiny_image(spare_engine)
    spare_engine.cli("volume", "create", "ss-leftover-volume")
    spare_engine.cli("network", "create", "ss-leftover-net")
    spare_engine.cli("run", "-d", "--name", "ss-leftover", "--network", "host", image,
                     "sleep", "300")
    old_dockerd = spare_engine.proc.pid
    old_processes = spare_engine.processes()

    successor = DockerEngine(data_root=spare_engine.data_root, run_dir=spare_engine.run_dir,
                             persistent=False)
    try:
        successor.start()
        assert not alive(old_dockerd)
        assert {p for p in old_processes if alive(p)} <= successor.processes()
        assert successor.leftovers() == {"containers": [], "volumes": [], "networks": []}
        assert successor.image_exists(image)  # images are the cache: they stay
    finally:
        successor.stop()
    assert not successor.processes() and not successor.mounts()


def test_a_stale_pidfile_and_socket_do_not_stop_a_start(spare_engine):
    """A pidfile naming a live process that is not our dockerd (here: a sleep of ours, as a
    recycled pid would be) is left alone; the leftover socket file is replaced."""
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        spare_engine.run_dir.mkdir(parents=True, exist_ok=True)
        spare_engine.pidfile.write_text(f"{bystander.pid}\n")
        leftover = socket.socket(socket.AF_UNIX)
        leftover.bind(str(spare_engine.socket))
        leftover.close()  # a socket file nobody listens on
        spare_engine.start()
        assert spare_engine.ping()
        assert bystander.poll() is None  # not ours: never signalled
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


def test_stopping_drops_dangling_images_and_keeps_tagged_ones(spare_engine):
    """A test tag rebuilt leaves its earlier image untagged ("dangling"); the data root
    is kept between runs, so teardown prunes those, never a tagged image."""
    spare_engine.start()
    image = tiny_image(spare_engine)
    for step in ("one", "two"):  # two builds of one tag: the first ends up dangling
        spare_engine.cli("build", "-t", "ss-test-rebuilt:1", "-", env={"DOCKER_BUILDKIT": "0"},
                         input=f"FROM {image}\nLABEL step={step}\n".encode())
    dangling = spare_engine.cli("images", "--quiet", "--filter", "dangling=true").stdout.split()
    assert len(dangling) == 1
    spare_engine.persistent = True  # keep its data root for the next start, as the suite's
    spare_engine.stop()
    again = DockerEngine(data_root=spare_engine.data_root, run_dir=spare_engine.run_dir,
                         persistent=False)
    try:
        again.start()
        assert again.cli("images", "--quiet", "--filter", "dangling=true").stdout.split() == []
        assert again.image_exists("ss-test-rebuilt:1") and again.image_exists(image)
    finally:
        again.stop()
