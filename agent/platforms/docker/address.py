"""Where the Docker engine is: DOCKER_HOST (a Unix socket, or TCP with TLS) as an endpoint.

The Engine API is root on the engine's machine, so plain TCP is refused unless it stays on
loopback; `tcp://` to anything else needs DOCKER_TLS_VERIFY with the CA, client certificate
and key in DOCKER_CERT_PATH (`ca.pem`, `cert.pem`, `key.pem`, as the docker CLI has them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_TLS_PORT = 2376


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TLSFiles:
        return cls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")

    def problems(self) -> list[str]:
        return [f"{path} is not a readable file" for path in (self.ca, self.cert, self.key)
                if not path.is_file()]


@dataclass(frozen=True)
class EngineAddress:
    """A parsed DOCKER_HOST: `unix_path`, or `host`/`port` (with `tls` when verified)."""

    unix_path: str | None = None
    host: str | None = None
    port: int | None = None
    tls: TLSFiles | None = None

    @classmethod
    def parse(cls, docker_host: str, tls_verify: bool = False,
              cert_path: Path | None = None) -> EngineAddress:
        """Raise ValueError with a sentence an operator can act on."""
        url = urlparse(docker_host or DEFAULT_DOCKER_HOST)
        if url.scheme == "unix":
            path = url.path or url.netloc
            if not path.startswith("/"):
                raise ValueError(f"{docker_host!r}: a unix:// address needs an absolute path")
            return cls(unix_path=path)
        if url.scheme in ("tcp", "https"):
            if not url.hostname:
                raise ValueError(f"{docker_host!r}: expected tcp://HOST:PORT")
            try:
                port = url.port or DEFAULT_TLS_PORT
            except ValueError:
                raise ValueError(f"{docker_host!r}: the port is not a number") from None
            tls = None
            if tls_verify or url.scheme == "https":
                files = TLSFiles.in_directory(cert_path or Path.home() / ".docker")
                missing = files.problems()
                if missing:
                    raise ValueError("DOCKER_TLS_VERIFY needs ca.pem, cert.pem and key.pem in "
                                     f"DOCKER_CERT_PATH: {'; '.join(missing)}")
                tls = files
            elif not _loopback(url.hostname):
                raise ValueError(f"{docker_host!r}: the Docker API over plain TCP is root on "
                                 "that machine for anyone on the network; set "
                                 "DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (or use a "
                                 "unix:// socket)")
            return cls(host=url.hostname, port=port, tls=tls)
        raise ValueError(f"{docker_host!r}: DOCKER_HOST must be unix:///PATH or tcp://HOST:PORT")

    @property
    def base_url(self) -> str:
        """The URL prefix requests use (the endpoint decides where bytes really go)."""
        if self.unix_path is not None:
            return "http://docker"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def endpoint(self, reactor, timeout: float = 10.0) -> IStreamClientEndpoint:
        if self.unix_path is not None:
            return UNIXClientEndpoint(reactor, self.unix_path, timeout=timeout)
        tcp = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if self.tls is None:
            return tcp
        return wrapClientTLS(self._tls_options(), tcp)

    def _tls_options(self):
        from twisted.internet import ssl

        assert self.tls is not None
        ca = ssl.Certificate.loadPEM(self.tls.ca.read_bytes())
        client = ssl.PrivateCertificate.loadPEM(self.tls.cert.read_bytes()
                                                + b"\n" + self.tls.key.read_bytes())
        return ssl.optionsForClientTLS(str(self.host), trustRoot=ca, clientCertificate=client)

    def describe(self) -> str:
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        return f"tcp://{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
