"""Cluster access like every Kubernetes client: in-cluster, or a kubeconfig and context.

The `kubernetes` package only parses (kubeconfig contexts, `*-data` and file references,
exec/auth-provider plugins, in-cluster environment); every request goes through treq
(client.py) with what is loaded here:
- the server URL; the CA that signs its certificate (never `insecure-skip-tls-verify`:
  such a kubeconfig is refused), the `tls-server-name` if given;
- a client certificate and key, if the user has one;
- a bearer token, re-read as it rotates: in-cluster the service-account token file is
  read again every minute (kubelet rotates it); a kubeconfig token from an exec or auth
  plugin is refreshed by the package's own hook, run on a one-thread pool of ours (never
  the reactor's default pool, never on the reactor).
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from twisted.internet import defer, threads
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

log = Logger()

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD = 60.0


class ClusterConfigError(Exception):
    """The cluster cannot be reached as configured (the message says what to fix)."""


class TokenFile:
    """A bearer token file re-read at most every `period` seconds (rotated tokens)."""

    def __init__(self, path: Path, clock, period: float = TOKEN_REREAD) -> None:
        self.path, self.clock, self.period = path, clock, period
        self._token = ""
        self._read_at = float("-inf")

    def header(self) -> str | None:
        now = self.clock.seconds()
        if now - self._read_at >= self.period or not self._token:
            try:
                token = self.path.read_text().strip()
            except OSError as e:
                if not self._token:
                    raise ClusterConfigError(f"cannot read the token file {self.path}: "
                                             f"{e.strerror}") from None
                log.warn("cannot re-read the token file {path}: {err}; keeping the last "
                         "token", path=str(self.path), err=e.strerror)
                token = self._token
            self._token, self._read_at = token, now
        return f"Bearer {self._token}" if self._token else None


class StaticToken:
    def __init__(self, value: str | None) -> None:
        self.value = value

    def header(self) -> str | None:
        return self.value


class RefreshedToken:
    """A kubeconfig token whose plugin may renew it: the package's hook runs on our own
    one-thread pool every `period` seconds; requests use the latest value."""

    def __init__(self, reactor, configuration, period: float = TOKEN_REREAD) -> None:
        self.reactor, self.configuration, self.period = reactor, configuration, period
        self.value = configuration.api_key.get("BearerToken")
        self._pool: ThreadPool | None = None
        self._refreshed_at = reactor.seconds()
        self._refreshing: defer.Deferred | None = None

    def header(self) -> str | None:
        hook = self.configuration.refresh_api_key_hook
        if (hook is not None and self._refreshing is None
                and self.reactor.seconds() - self._refreshed_at >= self.period):
            self._refreshing = self._refresh(hook)
        return self.value

    def _refresh(self, hook) -> defer.Deferred:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="kube-credentials")
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

        def done(_):
            self.value = self.configuration.api_key.get("BearerToken") or self.value
            self._refreshed_at, self._refreshing = self.reactor.seconds(), None

        def failed(failure):
            log.warn("refreshing the Kubernetes credentials failed: {err}",
                     err=failure.getErrorMessage())
            self._refreshed_at, self._refreshing = self.reactor.seconds(), None

        d = threads.deferToThreadPool(self.reactor, self._pool, hook, self.configuration)
        return d.addCallbacks(done, failed)


@dataclass
class ClusterAccess:
    """Where the API server is and how to prove who we are to it."""

    server: str
    ca_pem: bytes | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    tls_server_name: str | None = None
    token: StaticToken | TokenFile | RefreshedToken = field(
        default_factory=lambda: StaticToken(None))
    in_cluster: bool = False

    def __post_init__(self) -> None:
        parsed = urlparse(self.server)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise ClusterConfigError(f"the API server URL {self.server!r} is not "
                                     "https://host[:port]")
        if parsed.scheme == "http" and not _loopback(parsed.hostname):
            raise ClusterConfigError(f"refusing plain http to the API server "
                                     f"{parsed.hostname} (only a loopback kubectl proxy may "
                                     "be http)")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base_path = parsed.path.rstrip("/")

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}{path}"

    def authorization(self) -> str | None:
        return self.token.header()

    def tls_creator(self):
        """Client TLS options: our CA only (system CAs if none is given), our client
        certificate, hostname (or tls-server-name) verified by service-identity."""
        trust = Certificate.loadPEM(self.ca_pem) if self.ca_pem else None
        client = None
        if self.client_cert_pem and self.client_key_pem:
            client = PrivateCertificate.loadPEM(self.client_key_pem + b"\n"
                                                + self.client_cert_pem)
        return optionsForClientTLS(self.tls_server_name or self.host, trustRoot=trust,
                                   clientCertificate=client)


@implementer(IPolicyForHTTPS)
class ClusterTLSPolicy:
    """treq's TLS policy for the API server: the cluster's own trust, nothing else."""

    def __init__(self, access: ClusterAccess) -> None:
        self.access = access
        self._creator = access.tls_creator() if access.tls else None

    def creatorForNetloc(self, hostname: bytes, port: int):
        if self._creator is None:
            raise ClusterConfigError("no TLS for a plain-http API server")
        return self._creator


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ClusterConfigError(f"cannot read {path}: {e.strerror}") from None


def in_cluster(reactor, environ=os.environ,
               account_dir: str = SERVICE_ACCOUNT_DIR) -> ClusterAccess:
    """The pod's service account: KUBERNETES_SERVICE_HOST/PORT, its CA and token files."""
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    token_path = Path(account_dir) / "token"
    ca_path = Path(account_dir) / "ca.crt"
    configuration = Configuration()
    try:
        InClusterConfigLoader(str(token_path), str(ca_path), try_refresh_token=False,
                              environ=environ).load_and_set(configuration)
    except ConfigException as e:
        raise ClusterConfigError(f"in-cluster configuration: {e}") from None
    return ClusterAccess(server=configuration.host, ca_pem=_read(str(ca_path)),
                         token=TokenFile(token_path, reactor), in_cluster=True)


def from_kubeconfig(reactor, path: str | None, context: str | None,
                    temp_dir: Path | None = None) -> ClusterAccess:
    """A kubeconfig file (KUBECONFIG, else ~/.kube/config) and its current or named context."""
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import load_kube_config

    file = path or os.path.expanduser("~/.kube/config")
    if not os.path.isfile(file):
        raise ClusterConfigError(f"no kubeconfig at {file} (set KUBECONFIG, or run the agent "
                                 "in the cluster)")
    scratch = Path(temp_dir or tempfile.mkdtemp(prefix="streamspace-kube-"))
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    configuration = Configuration()
    try:
        load_kube_config(config_file=file, context=context or None,
                         client_configuration=configuration, persist_config=False,
                         temp_file_path=str(scratch))
    except (ConfigException, KeyError, ValueError, OSError) as e:
        raise ClusterConfigError(f"kubeconfig {file}: {e}") from None
    if not configuration.verify_ssl:
        raise ClusterConfigError(f"kubeconfig {file}: the cluster sets "
                                 "insecure-skip-tls-verify; give its CA instead "
                                 "(certificate-authority or certificate-authority-data)")
    token: StaticToken | RefreshedToken = StaticToken(None)
    if configuration.api_key.get("BearerToken"):
        token = RefreshedToken(reactor, configuration)
    return ClusterAccess(
        server=configuration.host, ca_pem=_read(configuration.ssl_ca_cert),
        client_cert_pem=_read(configuration.cert_file),
        client_key_pem=_read(configuration.key_file),
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        token=token)


def load(reactor, *, kubeconfig: str | None, context: str | None, mode: str,
         environ=os.environ, account_dir: str = SERVICE_ACCOUNT_DIR,
         temp_dir: Path | None = None) -> ClusterAccess:
    """`mode`: in-cluster, kubeconfig, or auto (in-cluster when running in a pod and no
    KUBECONFIG is given)."""
    if mode == "auto":
        mode = ("in-cluster" if environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig
                else "kubeconfig")
    if mode == "in-cluster":
        return in_cluster(reactor, environ, account_dir)
    return from_kubeconfig(reactor, kubeconfig, context, temp_dir)


