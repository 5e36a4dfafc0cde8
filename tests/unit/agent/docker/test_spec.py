"""A template's platforms.docker settings become a confined, labelled container body; bad
settings are refused with a sentence before anything is created."""

import pytest

from agent.platforms.base import DriverError, SessionTemplate, UserRef
from agent.platforms.docker import spec as S

ALICE = UserRef("u-1", "alice\x07")


def template(docker=None, **changes) -> SessionTemplate:
    data = {"name": "desk", "display_name": "Desktop", "cpu": 1.5, "memory_mb": 512,
            "env": {"LANG": "C.UTF-8", "SHARED": "template"}, "persistent_home": True,
            "platforms": {"docker": {"image": "example/desk:1", **(docker or {})}}}
    data.update(changes)
    return SessionTemplate.from_json(data)


BRIDGE = S.Placement()


def body(tpl: SessionTemplate, placement=BRIDGE, port=5901):
    spec = S.SessionSpec.from_template(tpl)
    volume = S.home_volume(tpl, ALICE, "sid-1")
    labels = S.labels(session_id="sid-1", template=tpl, user=ALICE, agent_id="agent-a",
                      name="my\ndesk", spec=spec, vnc_port=port, volume=volume)
    return S.container_body(spec=spec, placement=placement, template=tpl, user=ALICE,
                            name="my\ndesk", vnc_port=port, container_labels=labels,
                            volume=volume)


def env_of(data) -> dict:
    return dict(item.split("=", 1) for item in data["Env"])


def test_confinement_resources_and_labels_by_default():
    data = body(template(docker={"env": {"SHARED": "docker", "EXTRA": 1}}))
    host = data["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == [] and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True and host["Init"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/run"}
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == host["MemorySwap"] == 512 << 20
    assert host["Mounts"] == [{"Type": "volume", "Source": "streamspace-home-u-1-desk",
                               "Target": "/home/streamspace"}]
    assert host["RestartPolicy"] == {"Name": "no"}  # the agent decides, not the engine
    assert data["User"] == "1000:1000" and data["Image"] == "example/desk:1"
    labels = data["Labels"]
    assert labels[S.MANAGED_BY] == "streamspace" and labels[S.SESSION] == "sid-1"
    assert labels[S.USER] == "u-1" and labels[S.TEMPLATE] == "desk"
    assert labels[S.AGENT] == "agent-a" and labels[S.HIBERNATE] == "stop"
    assert labels[S.USERNAME] == "alice" and labels[S.NAME] == "mydesk"  # no control chars
    env = env_of(data)
    assert env["SHARED"] == "docker" and env["EXTRA"] == "1" and env["LANG"] == "C.UTF-8"
    assert env["VNC_PORT"] == "5901" and env["HOME"] == "/home/streamspace"
    assert env["STREAMSPACE_SESSION_ID"] == "sid-1" and "VNC_LOCALHOST" not in env


def test_host_network_listens_on_loopback_and_publishes_nothing():
    data = body(template(), S.Placement(network="host"), port=15907)
    assert data["HostConfig"]["NetworkMode"] == "host"
    assert "PortBindings" not in data["HostConfig"] and "ExposedPorts" not in data
    env = env_of(data)
    assert env["VNC_PORT"] == "15907" and env["VNC_LOCALHOST"] == "1"
    assert data["Labels"][S.VNC_PORT] == "15907"


def test_published_port_is_bound_to_loopback_only():
    data = body(template(), S.Placement(network="sessions", publish=True))
    assert data["HostConfig"]["NetworkMode"] == "sessions"
    assert data["HostConfig"]["PortBindings"] == {
        "5901/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert data["ExposedPorts"] == {"5901/tcp": {}}
    unpublished = body(template(), S.Placement(network="sessions"))
    assert "PortBindings" not in unpublished["HostConfig"]


def test_template_choices_pass_through():
    data = body(template(docker={
        "command": ["icewm-session"], "entrypoint": "exec /start", "vnc_port": 5999,
        "vnc_port_env": "DISPLAY_PORT", "shm_size": "1g", "cap_add": ["sys_nice"],
        "security_opt": ["apparmor=docker-default"], "read_only_root": False,
        "home": "/headless", "user": "1001", "hibernate": "pause"}), port=5999)
    host = data["HostConfig"]
    assert data["Cmd"] == ["icewm-session"] and data["Entrypoint"] == ["/bin/sh", "-c",
                                                                         "exec /start"]
    assert host["ShmSize"] == 1 << 30 and host["CapAdd"] == ["SYS_NICE"]
    assert host["SecurityOpt"] == ["no-new-privileges:true", "apparmor=docker-default"]
    assert host["ReadonlyRootfs"] is False and data["User"] == "1001"
    assert host["Mounts"][0]["Target"] == "/headless" and env_of(data)["HOME"] == "/headless"
    assert env_of(data)["DISPLAY_PORT"] == "5999" and data["Labels"][S.HIBERNATE] == "pause"


def test_home_volume_per_user_and_template_or_per_session():
    assert S.home_volume(template(), ALICE, "s") == "streamspace-home-u-1-desk"
    assert S.home_volume(template(persistent_home=False), ALICE, "s") == \
        "streamspace-session-s"
    volume = S.volume_body("v", session_id="s", template=template(persistent_home=False),
                           user=ALICE, agent_id="a")
    assert volume["Labels"][S.SESSION] == "s" and volume["Labels"][S.AGENT] == "a"


@pytest.mark.parametrize("docker, problem", [
    ({"image": ""}, "has no platforms.docker.image"),
    ({"image": "bad image"}, "not an image reference"),
    ({"user": "root"}, "never run as root"),
    ({"user": "0:1000"}, "never run as root"),
    ({"cap_add": ["ALL"]}, "ALL is not allowed"),
    ({"cap_add": "NET_ADMIN"}, "list of strings"),
    ({"security_opt": ["no-new-privileges=false"]}, "weaken"),
    ({"security_opt": ["seccomp=unconfined"]}, "weaken"),
    ({"security_opt": ["label=disable"]}, "weaken"),
    ({"hibernate": "sleep"}, "'stop' or 'pause'"),
    ({"vnc_port": 0}, "port number"),
    ({"vnc_port": True}, "port number"),
    ({"shm_size": "lots"}, "not a size"),
    ({"home": "relative"}, "absolute directory"),
    ({"geometry": "big"}, "WIDTHxHEIGHT"),
    ({"env": {"1BAD": "x"}}, "invalid variable name"),
    ({"command": 42}, "string or a list"),
    ({"read_only_root": "no"}, "true or false"),
])
def test_bad_settings_are_refused_with_a_reason(docker, problem):
    with pytest.raises(DriverError, match=problem):
        S.SessionSpec.from_template(template(docker=docker))


def test_a_template_without_docker_settings_is_refused():
    tpl = SessionTemplate.from_json({"name": "local-only",
                                     "platforms": {"local": {"command": "xterm"}}})
    with pytest.raises(DriverError, match="cannot run on the Docker platform"):
        S.SessionSpec.from_template(tpl)
