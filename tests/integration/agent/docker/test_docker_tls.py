"""DOCKER_HOST=tcp:// with DOCKER_TLS_VERIFY against a real dockerd listening with
`--tlsverify` on loopback: the agent verifies the engine with the CA and presents its
client certificate; an engine whose certificate another CA signed is refused."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor

from agent.platforms.docker import build_driver
from agent.platforms.docker.address import EngineAddress
from agent.platforms.docker.engine import EngineClient, EngineError
from tests.support.dockerd import DockerEngine, blocking
from tests.support.processes import free_port

pytestmark = pytest.mark.slow


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(
            self.key, hashes.SHA256())

    def _builder(self, subject, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=2)))

    def issue(self, directory: Path, stem: str, usage, server: bool = False) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
        builder = self._builder(subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}-key.pem").write_bytes(_pem(key))

    def write(self, path: Path) -> None:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory):
    """A second, private dockerd that listens only on 127.0.0.1 with --tlsverify."""
    certs = tmp_path_factory.mktemp("tls")
    ca = CA("engine CA")
    ca.write(certs / "ca.pem")
    ca.issue(certs, "server", ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    ca.issue(certs, "client", ExtendedKeyUsageOID.CLIENT_AUTH)
    agent_dir = certs / "agent"  # DOCKER_CERT_PATH as the docker CLI lays it out
    agent_dir.mkdir()
    shutil.copy(certs / "ca.pem", agent_dir / "ca.pem")
    shutil.copy(certs / "client.pem", agent_dir / "cert.pem")
    shutil.copy(certs / "client-key.pem", agent_dir / "key.pem")
    port = free_port()
    engine = DockerEngine(data_root=certs / "data",
                          run_dir=Path(f"/tmp/ssd-tls-{os.getpid()}"), persistent=False)
    engine.run_dir.mkdir(parents=True, exist_ok=True)
    argv = [shutil.which("dockerd", path="/usr/sbin:/usr/bin:/sbin:/bin"),
            "--data-root", str(engine.data_root), "--exec-root", str(engine.exec_root),
            "-H", f"tcp://127.0.0.1:{port}", "--tlsverify",
            "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "server.pem"),
            "--tlskey", str(certs / "server-key.pem"), "--pidfile", str(engine.pidfile),
            "--bridge=none", "--iptables=false", "--ip-masq=false"]
    with open(engine.log_path, "ab") as log:
        engine.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
    cli = ["docker", "--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert",
           str(certs / "client.pem"), "--tlskey", str(certs / "client-key.pem"),
           "-H", f"tcp://127.0.0.1:{port}", "version"]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(cli, capture_output=True).returncode != 0:
            assert engine.proc.poll() is None and time.monotonic() < deadline, \
                engine.log_tail()
            time.sleep(0.1)  # blocking fixture set-up, not reactor code
        yield {"host": f"tcp://127.0.0.1:{port}", "cert_path": agent_dir, "certs": certs}
    finally:
        blocking(engine.stop)
        assert not engine.processes() and not engine.mounts()


@pytest_twisted.ensureDeferred
async def test_the_agent_talks_tls_to_the_engine_with_its_client_certificate(tls_engine):
    options = {"docker_host": tls_engine["host"], "docker_tls_verify": "1",
               "docker_cert_path": str(tls_engine["cert_path"]), "docker_network": "host",
               "docker_publish_vnc": "false", "docker_pull": "never",
               "docker_purge_homes": "on-request", "agent_id": "tls-agent"}
    driver = build_driver(reactor, options, Path("/nonexistent"), None)
    assert driver.client.address.tls is not None
    # negotiated, listed, the events stream open: all over TLS (start retries by itself
    # while it cannot, so a broken handshake shows as this deadline passing)
    await driver.start().addTimeout(30, reactor)
    try:
        assert driver.client.version == (1, 41) and driver.events.connected
        assert driver.list_sessions() == []
    finally:
        await driver.shutdown()


@pytest_twisted.ensureDeferred
async def test_an_engine_certified_by_another_ca_is_refused(tls_engine, tmp_path):
    for name in ("cert.pem", "key.pem"):
        shutil.copy(tls_engine["cert_path"] / name, tmp_path / name)
    CA("someone else's CA").write(tmp_path / "ca.pem")
    client = EngineClient(reactor, EngineAddress.parse(tls_engine["host"], True, tmp_path))
    try:
        with pytest.raises(EngineError, match="did not answer.*certificate verify failed"):
            await client.negotiate()
    finally:
        await client.close()
