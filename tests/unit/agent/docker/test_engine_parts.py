"""The Engine API client's pure parts: DOCKER_HOST parsing (plain TCP only to loopback),
version negotiation, log demultiplexing, pull progress, and reading a container's end."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.platforms.base import DriverError, VncEndpoint
from agent.platforms.docker import build_driver
from agent.platforms.docker.address import EngineAddress
from agent.platforms.docker.containers import (
    exit_reason,
    isolation_warning,
    last_output,
    vnc_endpoint,
)
from agent.platforms.docker.engine import EngineError, choose_version, demultiplex
from agent.platforms.docker.images import PullProgress, split_reference
from agent.platforms.docker.spec import VNC_PORT, Placement
from streamspace_common.settings import ConfigError


def test_docker_host_forms():
    unix = EngineAddress.parse("unix:///run/x/docker.sock")
    assert unix.unix_path == "/run/x/docker.sock" and unix.base_url == "http://docker"
    assert EngineAddress.parse("").unix_path == "/var/run/docker.sock"
    local = EngineAddress.parse("tcp://127.0.0.1:2375")
    assert (local.host, local.port, local.tls) == ("127.0.0.1", 2375, None)
    assert local.base_url == "http://127.0.0.1:2375"


@pytest.mark.parametrize("host, problem", [
    ("tcp://10.0.0.5:2375", "root on that machine"),
    ("tcp://docker.example.com", "DOCKER_TLS_VERIFY"),
    ("unix://relative.sock", "absolute path"),
    ("ssh://me@box", "must be unix"),
    ("tcp://:2375", "tcp://HOST:PORT"),
])
def test_unsafe_or_malformed_docker_hosts_are_refused(host, problem):
    with pytest.raises(ValueError, match=problem):
        EngineAddress.parse(host)


def test_tls_needs_its_three_files(tmp_path):
    with pytest.raises(ValueError, match="ca.pem, cert.pem and key.pem"):
        EngineAddress.parse("tcp://docker.example.com:2376", True, tmp_path)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    secured = EngineAddress.parse("tcp://docker.example.com:2376", True, tmp_path)
    assert secured.tls is not None and secured.base_url.startswith("https://")


def test_version_negotiation():
    assert choose_version("1.41", "1.12") == (1, 41)
    assert choose_version("1.52", "1.44") == (1, 47)  # the newest this client knows
    with pytest.raises(EngineError, match="needs 1.40 or newer"):
        choose_version("1.39", "1.12")
    with pytest.raises(EngineError, match="needs API 1.48 or newer"):
        choose_version("1.55", "1.48")


def test_log_frames_are_demultiplexed_and_raw_logs_kept():
    framed = b"\x01\0\0\0\0\0\0\x06hello\n" + b"\x02\0\0\0\0\0\0\x05boom\n"
    assert demultiplex(framed) == b"hello\nboom\n"
    assert demultiplex(b"plain tty output\n") == b"plain tty output\n"
    assert demultiplex(b"") == b""


def test_pull_progress_over_all_layers_in_steps():
    p = PullProgress("example/app:1")
    seen = [p.update(e) for e in [
        {"status": "Pulling from example/app", "id": "1"},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 10, "total": 100}},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 0, "total": 100}},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 12, "total": 100}},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 100, "total": 100}},
        {"status": "Download complete", "id": "b"},
    ]]
    assert [m for m in seen if m] == ["pulling image example/app:1: 10%",
                                      "pulling image example/app:1: 50%",
                                      "pulling image example/app:1: 100%"]
    p.update({"error": "pull access denied for example/app"})
    assert p.error == "pull access denied for example/app"


def test_image_references():
    assert split_reference("debian") == ("debian", "latest")
    assert split_reference("registry:5000/team/app:2") == ("registry:5000/team/app", "2")
    assert split_reference("registry:5000/team/app") == ("registry:5000/team/app", "latest")
    assert split_reference("app@sha256:abc") == ("app@sha256:abc", "")


def test_reasons_for_an_end():
    assert exit_reason({"OOMKilled": True, "ExitCode": 137}, "", 64) == (
        "failed", "the session ran out of memory (its limit is 64 MB) and was killed")
    assert exit_reason({"ExitCode": 0}, "bye\n", 64) == ("stopped", "the application exited")
    state, reason = exit_reason({"ExitCode": 127, "Error": ""}, "a\n\nsh: x: not found\n", 0,
                                at_start=True)
    assert state == "failed"
    assert reason == "the container exited at start with code 127 (last output: a | sh: x: " \
                     "not found)"
    assert exit_reason({"ExitCode": 137}, "", 64, oom_event=True)[1].startswith(
        "the session ran out of memory")
    assert len(last_output("x" * 5000)) == 603


def test_where_the_vnc_server_is():
    info = {"Config": {"Labels": {VNC_PORT: "5901"}}, "NetworkSettings": {
        "Ports": {"5901/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]},
        "Networks": {"sessions": {"IPAddress": "192.0.2.7"}}}}
    assert vnc_endpoint(info, Placement("host")).port == 5901
    assert vnc_endpoint(info, Placement("sessions", publish=True)) == VncEndpoint("127.0.0.1",
                                                                                49153)
    assert vnc_endpoint(info, Placement("sessions")).host == "192.0.2.7"
    with pytest.raises(DriverError, match="no address on the Docker network 'other'"):
        vnc_endpoint(info, Placement("other"))


def _options(**changes):
    values = {"docker_host": "unix:///var/run/docker.sock", "docker_tls_verify": "",
              "docker_cert_path": "", "docker_network": "bridge",
              "docker_publish_vnc": "false", "docker_pull": "missing",
              "docker_purge_homes": "on-request", "agent_id": "a1"}
    values.update(changes)
    return values


def test_build_driver_reports_every_setting_problem_at_once():
    with pytest.raises(ConfigError) as info:
        build_driver(None, _options(docker_host="tcp://10.1.1.1:2375", docker_network="host",
                                    docker_publish_vnc="true"), Path("/tmp"), None)
    joined = " ".join(info.value.problems)
    assert "DOCKER_HOST" in joined and "DOCKER_PUBLISH_VNC" in joined


def test_build_driver_from_settings():
    from twisted.internet import reactor

    driver = build_driver(reactor, _options(docker_network="host", docker_pull="never",
                                            docker_purge_homes="always"), Path("/tmp"),
                          SimpleNamespace())
    assert driver.name == "docker" and driver.outlives_agent
    assert driver.placement.host_network and driver.pull_policy == "never"
    assert driver.purge_homes and driver.agent_id == "a1"


def test_networks_that_let_sessions_reach_each_other_are_named_at_start():
    assert "share the host's loopback" in isolation_warning(Placement("host"), None)
    assert "does not exist" in isolation_warning(Placement("sessions"), None)
    open_bridge = {"Driver": "bridge", "Options": {}}
    assert "enable_icc=false" in isolation_warning(Placement("bridge"), open_bridge)
    closed = {"Driver": "bridge", "Options": {"com.docker.network.bridge.enable_icc": "false"}}
    assert isolation_warning(Placement("sessions"), closed) is None
