"""The client address behind reverse proxies (login limits and audit depend on it)."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address

from streamspace.api.auth import client_addr
from streamspace.config import ServerOptions, ip_networks
from streamspace_common.settings import ConfigError


class Req:
    def __init__(self, peer: str, forwarded: str | None = None) -> None:
        self.peer = peer
        self.forwarded = forwarded

    def getClientAddress(self):
        return IPv4Address("TCP", self.peer, 1234)

    def getHeader(self, name: bytes):
        assert name == b"x-forwarded-for"
        return self.forwarded.encode() if self.forwarded is not None else None


PROXIES = ip_networks("10.0.0.0/8, 192.168.1.5")


def test_untrusted_peers_are_taken_as_they_are():
    assert client_addr(Req("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
    assert client_addr(Req("203.0.113.9", "1.2.3.4"), PROXIES) == "203.0.113.9"


@pytest.mark.parametrize("forwarded, expected", [
    ("198.51.100.7", "198.51.100.7"),
    ("6.6.6.6, 198.51.100.7", "198.51.100.7"),  # a client cannot spoof past the proxy
    ("198.51.100.7, 10.1.1.1", "198.51.100.7"),  # chained trusted proxies are skipped
    ("not-an-ip", "10.0.0.2"),
    ("10.2.2.2", "10.0.0.2"),
    (None, "10.0.0.2"),
])
def test_trusted_proxy_chain(forwarded, expected):
    assert client_addr(Req("10.0.0.2", forwarded), PROXIES) == expected


def test_setting_parses_and_reports_bad_entries():
    opts = ServerOptions(environ={"TRUSTED_PROXIES": "10.0.0.0/8,::1"})
    opts.parseOptions([])
    assert [str(n) for n in opts["trusted_proxies"]] == ["10.0.0.0/8", "::1/128"]
    default = ServerOptions(environ={})
    default.parseOptions([])
    assert default["trusted_proxies"] == ()
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES: 'nope'"):
        ServerOptions(environ={"TRUSTED_PROXIES": "nope"}).parseOptions([])
