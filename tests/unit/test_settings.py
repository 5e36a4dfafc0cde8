"""Configuration parsing: env fallbacks, flags over env, and every problem reported at once."""

import pytest

from agent.config import AgentOptions
from streamspace.config import ServerOptions, is_dev, uses_embedded_database
from streamspace_common.settings import ConfigError, parse_duration


def parse(cls, argv, env):
    opts = cls(environ=env)
    opts.parseOptions(argv)
    return opts


def test_defaults_mean_embedded_dev_mode():
    opts = parse(ServerOptions, [], {})
    assert opts["port"] == 8080
    assert opts["agent_heartbeat_timeout"] == 30.0
    assert opts["vnc_proxy_timeout"] == 300.0
    assert uses_embedded_database(opts) and is_dev(opts)


def test_environment_fallbacks_and_flag_precedence():
    env = {"PORT": "9000", "LOG_LEVEL": "DEBUG", "DB_HOST": "db", "DB_USER": "u",
           "JWT_SECRET": "x" * 40, "VNC_PROXY_TIMEOUT": "90s", "COMMAND_TIMEOUT": "2m"}
    opts = parse(ServerOptions, ["--port", "9100"], env)
    assert opts["port"] == 9100  # the flag wins over the environment
    assert opts["log_level"] == "debug"
    assert opts["vnc_proxy_timeout"] == 90.0
    assert opts["command_timeout"] == 120.0
    assert not uses_embedded_database(opts) and not is_dev(opts)


def test_all_problems_reported_together():
    env = {"PORT": "http", "LOG_LEVEL": "loud", "AGENT_HEARTBEAT_TIMEOUT": "-3",
           "DB_HOST": "db", "DB_USER": "u", "JWT_SECRET": "short"}
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], env)
    problems = info.value.problems
    assert len(problems) == 3, problems
    text = str(info.value.code)
    for needle in ("PORT", "LOG_LEVEL", "AGENT_HEARTBEAT_TIMEOUT"):
        assert needle in text
    assert text.startswith("streamspace: invalid configuration (3 problem(s))")


def test_short_jwt_secret_refused_outside_dev_mode():
    env = {"DB_HOST": "db", "DB_USER": "u", "JWT_SECRET": "too-short"}
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], env)
    assert any("JWT_SECRET" in p and "32" in p for p in info.value.problems)
    # accepted in dev mode (embedded database)
    opts = parse(ServerOptions, [], {"JWT_SECRET": "too-short"})
    assert opts["jwt_secret"] == "too-short"


def test_external_database_requires_jwt_secret_and_user():
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], {"DB_HOST": "db"})
    joined = " ".join(info.value.problems)
    assert "DB_USER" in joined and "JWT_SECRET" in joined


def test_database_url_validated():
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], {"DATABASE_URL": "mysql://x", "JWT_SECRET": "y" * 32})
    assert "DATABASE_URL" in info.value.problems[0]


@pytest.mark.parametrize("text,seconds", [("30", 30), ("30s", 30), ("5m", 300), ("1.5h", 5400),
                                          ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_agent_options_report_everything_missing():
    with pytest.raises(ConfigError) as info:
        parse(AgentOptions, [], {"MAX_SESSIONS": "many", "PLATFORM": "mainframe"})
    joined = " ".join(info.value.problems)
    for needle in ("MAX_SESSIONS", "PLATFORM"):
        assert needle in joined
    # required-field checks run once parse errors are fixed
    with pytest.raises(ConfigError) as info:
        parse(AgentOptions, [], {})
    joined = " ".join(info.value.problems)
    for needle in ("AGENT_ID", "CONTROL_PLANE_URL", "AGENT_TOKEN"):
        assert needle in joined


def test_agent_options_from_environment():
    env = {"AGENT_ID": "k8s-1", "CONTROL_PLANE_URL": "wss://cp.example.com", "AGENT_TOKEN": "t",
           "PLATFORM": "local", "REGION": "us-east-1", "MAX_CPU": "100",
           "MAX_MEMORY": "256", "MAX_SESSIONS": "50"}
    opts = parse(AgentOptions, [], env)
    assert opts["platform"] == "local"
    assert opts["max_sessions"] == 50 and opts["max_cpu"] == 100.0
    assert opts["heartbeat_interval"] == 10.0


def test_dev_mode_listens_on_loopback_unless_told_otherwise():
    from streamspace.config import listen_interface, local_url, public_url

    dev = parse(ServerOptions, [], {})
    assert listen_interface(dev) == "127.0.0.1"
    prod = parse(ServerOptions, [], {"DB_HOST": "db", "DB_USER": "u", "JWT_SECRET": "x" * 40})
    assert listen_interface(prod) == "0.0.0.0" and local_url(prod) == "http://127.0.0.1:8080"
    chosen = parse(ServerOptions, ["--interface", "::"], {"LISTEN_ADDRESS": "10.1.2.3"})
    assert listen_interface(chosen) == "::" and local_url(chosen) == "http://[::1]:8080"
    assert listen_interface(parse(ServerOptions, [], {"LISTEN_ADDRESS": "10.1.2.3"})) == \
        "10.1.2.3"
    assert public_url(dev) == "http://localhost:8080"


def test_tls_metrics_and_admin_password_settings_are_checked(tmp_path):
    from streamspace.config import host_port, public_url, uses_tls

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    opts = parse(ServerOptions, ["--tls-cert", str(cert)], {"TLS_KEY": str(key)})
    assert uses_tls(opts) and public_url(opts) == "https://localhost:8080"
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], {"TLS_CERT": str(cert), "METRICS_TOKEN": "short",
                                  "METRICS_ADDRESS": "127.0.0.1:8080",
                                  "ADMIN_PASSWORD": "admin"})
    text = "\n".join(info.value.problems)
    for needle in ("TLS_CERT/TLS_KEY: give both", "METRICS_TOKEN: must be at least 16",
                   "METRICS_ADDRESS: must not be the address of PORT",
                   "ADMIN_PASSWORD: the password must be at least 12"):
        assert needle in text, text
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], {"LISTEN_ADDRESS": "localhost"})
    assert info.value.problems == ["LISTEN_ADDRESS: 'localhost' is not an IP address"]
    ok = parse(ServerOptions, [], {"LISTEN_ADDRESS": "10.0.0.1",
                                   "METRICS_ADDRESS": "127.0.0.1:8080"})
    assert ok["metrics_address"] == ("127.0.0.1", 8080)
    assert host_port("9100") == (None, 9100)
    assert host_port("[::1]:9100") == ("::1", 9100)
    assert host_port("0.0.0.0:9100") == ("0.0.0.0", 9100)
    for bad in ("host:9100", "0", "9100:", "x"):
        with pytest.raises(ValueError):
            host_port(bad)


@pytest.mark.parametrize("trusted", ["127.0.0.1", "::1", "10.0.0.0/8, 127.0.0.0/30",
                                     "0.0.0.0/0", "::ffff:127.0.0.1"])
def test_loopback_proxies_are_refused_while_a_local_agent_shares_loopback(trusted):
    """Should-fix 1: local sessions share the host's loopback, so trusting it would let
    any session name its own client address and pass the login limits."""
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, ["--local-agent"], {"TRUSTED_PROXIES": trusted})
    [problem] = info.value.problems
    assert problem.startswith("TRUSTED_PROXIES:") and "LISTEN_UNIX" in problem
    # without the local agent it is the operator's call (a warning at start-up)
    assert parse(ServerOptions, [], {"TRUSTED_PROXIES": trusted})["trusted_proxies"]


def test_proxies_off_loopback_are_fine_with_a_local_agent():
    opts = parse(ServerOptions, ["--local-agent"], {"TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"})
    assert len(opts["trusted_proxies"]) == 2


def test_listen_unix_settings_are_checked(tmp_path):
    opts = parse(ServerOptions, [], {"LISTEN_UNIX": str(tmp_path / "http.sock"),
                                     "LISTEN_UNIX_GROUP": "nogroup"})
    assert opts["listen_unix"] == str(tmp_path / "http.sock")
    with pytest.raises(ConfigError) as info:
        parse(ServerOptions, [], {"LISTEN_UNIX": "run/http.sock",
                                  "LISTEN_UNIX_GROUP": "no-such-group-here"})
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "LISTEN_UNIX", "LISTEN_UNIX_GROUP"]
    with pytest.raises(ConfigError, match="does not exist"):
        parse(ServerOptions, [], {"LISTEN_UNIX": str(tmp_path / "missing" / "http.sock")})
    with pytest.raises(ConfigError, match="only meaningful with LISTEN_UNIX"):
        parse(ServerOptions, [], {"LISTEN_UNIX_GROUP": "nogroup"})
