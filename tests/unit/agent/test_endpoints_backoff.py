"""CONTROL_PLANE_URL mapping, and reconnect timing driven by a task.Clock."""

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError

from agent.backoff import MAX_DELAY, capped_backoff
from agent.channel import AgentChannel
from agent.control import ControlService
from agent.endpoints import ControlPlaneAddress
from tests.support.fake_driver import FakeDriver


@pytest.mark.parametrize("url, connect, tls", [
    ("http://cp:8080", "ws://cp:8080/api/v1/agent/connect?agent_id=a+1", False),
    ("https://cp.example.com", "wss://cp.example.com/api/v1/agent/connect?agent_id=a+1", True),
    ("ws://cp", "ws://cp/api/v1/agent/connect?agent_id=a+1", False),
    ("wss://cp:9443/streamspace/", "wss://cp:9443/streamspace/api/v1/agent/connect?agent_id=a+1",
     True),
    ("http://[::1]:8080", "ws://[::1]:8080/api/v1/agent/connect?agent_id=a+1", False),
])
def test_control_plane_url_forms(url, connect, tls):
    address = ControlPlaneAddress.parse(url)
    assert address.connect_url("a 1") == connect
    assert address.tls is tls


def test_tunnel_url_quotes_the_id():
    address = ControlPlaneAddress.parse("https://cp")
    assert address.tunnel_url("t/1") == "wss://cp/api/v1/agent/tunnel/t%2F1"


def test_bad_urls_are_refused():
    for url in ("ftp://cp", "cp:8080", "http://"):
        with pytest.raises(ValueError):
            ControlPlaneAddress.parse(url)


def test_backoff_grows_jittered_and_never_passes_the_cap():
    low, high = capped_backoff(rand=lambda: 0.0), capped_backoff(rand=lambda: 1.0)
    assert high(1) == pytest.approx(0.1) and low(1) == pytest.approx(0.05)
    assert [high(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.5])
    assert high(1000) == MAX_DELAY and low(1000) == MAX_DELAY / 2
    real = capped_backoff()
    assert all(0 < real(n) <= MAX_DELAY for n in range(1, 200))


class FlakyEndpoint:
    """Refuses connections while `down`, recording when each attempt happened."""

    def __init__(self, clock):
        self.clock, self.down, self.attempts = clock, True, []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        if self.down:
            return defer.fail(ConnectionRefusedError())
        return defer.Deferred()  # "connecting": enough to show an attempt was made


def test_reconnect_attempts_stay_within_the_cap_while_the_control_plane_is_down():
    clock = task.Clock()
    channel = AgentChannel(agent_id="a", platform_name="local", region="", driver=FakeDriver(),
                           clock=clock, heartbeat_interval=10, metadata={})
    endpoint = FlakyEndpoint(clock)
    service = ControlService(clock, ControlPlaneAddress.parse("ws://cp"), "t", channel,
                             endpoint=endpoint)
    service.startService()
    for _ in range(600):  # a minute of outage in 0.1 s steps
        clock.advance(0.1)
    gaps = [b - a for a, b in zip(endpoint.attempts, endpoint.attempts[1:], strict=False)]
    assert len(endpoint.attempts) > 40
    assert max(gaps) <= MAX_DELAY + 0.1
    assert channel.failures == len(endpoint.attempts)
    # the control plane comes back: the next attempt is at most one capped delay away
    endpoint.down = False
    back, before = clock.seconds(), len(endpoint.attempts)
    while len(endpoint.attempts) == before:
        clock.advance(0.05)
    assert endpoint.attempts[-1] - back <= MAX_DELAY
    service.stopService()
