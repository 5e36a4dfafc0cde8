"""The fake API server's certificates: a test CA, its server certificate for 127.0.0.1 and
localhost, and client certificates (made with tests/support/tls_certs.py)."""

from __future__ import annotations

from pathlib import Path

from tests.support.tls_certs import make_ca_and_server, make_client_cert


class TestPki:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_path, self.cert_path, self.key_path = make_ca_and_server(directory)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def client(self, common_name: str) -> tuple[Path, Path]:
        return make_client_cert(self.directory, common_name)

    def ca_cert_obj(self):
        from OpenSSL import crypto

        return crypto.load_certificate(crypto.FILETYPE_PEM, self.ca_pem)

    def server_cert_obj(self):
        from OpenSSL import crypto

        return crypto.load_certificate(crypto.FILETYPE_PEM, self.cert_path.read_bytes())

    def server_key_obj(self):
        from OpenSSL import crypto

        return crypto.load_privatekey(crypto.FILETYPE_PEM, self.key_path.read_bytes())
