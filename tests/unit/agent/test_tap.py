"""`twistd agent` start-up: configuration problems are one clear message, not a traceback."""

import pytest

from agent import tap
from agent.config import AgentOptions
from agent.service import AgentService
from streamspace_common.settings import ConfigError


def options(tmp_path, **env):
    base = {"AGENT_ID": "a1", "CONTROL_PLANE_URL": "http://127.0.0.1:1",
            "AGENT_TOKEN": "t0k3n", "AGENT_STATE_DIR": str(tmp_path / "state")}
    base.update(env)
    opts = AgentOptions(environ={k: v for k, v in base.items() if v is not None})
    opts.parseOptions([])
    return opts


def test_make_service_wires_the_agent(tmp_path):
    svc = tap.makeService(options(tmp_path, MAX_SESSIONS="4", REGION="eu"))
    assert isinstance(svc, AgentService)
    assert svc.channel.region == "eu" and svc.driver.capacity.max_sessions == 4
    assert svc.getServiceNamed("control") is not None
    assert (tmp_path / "state" / "commands.jsonl").exists()
    svc.journal.close()


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert tap.read_token(options(tmp_path, AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(f))) == \
        "from-file"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        tap.read_token(options(tmp_path, AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(f)))
    with pytest.raises(ConfigError, match="cannot read"):
        tap.read_token(options(tmp_path, AGENT_TOKEN=None,
                               AGENT_TOKEN_FILE=str(tmp_path / "missing")))


def test_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        options(tmp_path, AGENT_ID=None, CONTROL_PLANE_URL="ftp://x", AGENT_TOKEN=None,
                CONTROL_PLANE_CA_FILE=str(tmp_path / "nope.pem"))
    text = str(e.value)
    for name in ("AGENT_ID", "CONTROL_PLANE_URL", "AGENT_TOKEN", "CONTROL_PLANE_CA_FILE"):
        assert name in text


def test_unknown_driver_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="PLATFORM: 'vmware' is not one of local"):
        tap.makeService(options(tmp_path, PLATFORM="vmware"))


def test_local_platform_settings_reach_the_driver(tmp_path):
    svc = tap.makeService(options(tmp_path, LOCAL_ALLOW_UNSANDBOXED="true",
                                  LOCAL_HIDE_PATHS="/opt/cp-state:/srv/secrets"))
    assert svc.driver.allow_unsandboxed is True and svc.guard_process is True
    assert {"/opt/cp-state", "/srv/secrets", str(tmp_path / "state")} <= set(svc.driver.hidden)
    svc.journal.close()
    svc.state_lock.release()
    default = tap.makeService(options(tmp_path))
    assert default.driver.allow_unsandboxed is False  # the operator must opt in
    default.journal.close()
    default.state_lock.release()
    with pytest.raises(ConfigError) as e:
        options(tmp_path, LOCAL_ALLOW_UNSANDBOXED="yes please", LOCAL_HIDE_PATHS="rel/path")
    assert "LOCAL_ALLOW_UNSANDBOXED: 'yes please' is not one of true, false" in str(e.value)
    assert "LOCAL_HIDE_PATHS: not absolute: rel/path" in str(e.value)
