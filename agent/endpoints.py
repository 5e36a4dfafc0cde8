"""Where the control plane is: CONTROL_PLANE_URL turned into WebSocket URLs and endpoints.

Operators write `https://streamspace.example.com` as often as `wss://...`, so http(s) maps
to ws(s). A path in the URL is a prefix (a control plane behind `/streamspace/`). Both the
control channel and every tunnel connect through the same endpoint, with TLS for wss
(certificate and hostname verified by service-identity, optionally against a private CA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlparse

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS

_SCHEMES = {"ws": ("ws", 80), "http": ("ws", 80), "wss": ("wss", 443), "https": ("wss", 443)}

CONNECT_PATH = "/api/v1/agent/connect"
TUNNEL_PATH = "/api/v1/agent/tunnel/"


@dataclass(frozen=True)
class ControlPlaneAddress:
    scheme: str  # ws or wss
    host: str
    port: int
    prefix: str = ""
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> ControlPlaneAddress:
        p = urlparse(url.strip())
        if p.scheme not in _SCHEMES or not p.hostname:
            raise ValueError(f"{url!r}: expected ws(s)://host[:port] or http(s)://host[:port]")
        scheme, default_port = _SCHEMES[p.scheme]
        return cls(scheme, p.hostname, p.port or default_port, p.path.rstrip("/"), ca_file)

    @property
    def tls(self) -> bool:
        return self.scheme == "wss"

    def url(self, path: str, query: dict[str, str] | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        netloc = host if self.port == default else f"{host}:{self.port}"
        text = f"{self.scheme}://{netloc}{self.prefix}{path}"
        return f"{text}?{urlencode(query)}" if query else text

    def connect_url(self, agent_id: str) -> str:
        return self.url(CONNECT_PATH, {"agent_id": agent_id})

    def tunnel_url(self, tunnel_id: str) -> str:
        return self.url(TUNNEL_PATH + quote(tunnel_id, safe=""))

    def endpoint(self, reactor, timeout: float = 10.0) -> IStreamClientEndpoint:
        tcp = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if not self.tls:
            return tcp
        trust = None
        if self.ca_file:
            trust = Certificate.loadPEM(Path(self.ca_file).read_bytes())
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust), tcp)
