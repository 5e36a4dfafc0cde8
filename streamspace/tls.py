"""TLS for the control plane's port: HTTPS and WSS from one certificate (chain) and key."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message says which and why."""


def server_options(cert_file: str | Path, key_file: str | Path) -> ssl.CertificateOptions:
    """Options for listenSSL: the first certificate of `cert_file` is ours, the ones
    after it are the chain sent to clients."""
    try:
        blocks = _PEM_CERT.findall(Path(cert_file).read_bytes())
        if not blocks:
            raise TLSConfigError(f"TLS_CERT: no PEM certificate in {cert_file}")
        certs = [x509.load_pem_x509_certificate(b) for b in blocks]
    except (OSError, ValueError) as e:
        raise TLSConfigError(f"TLS_CERT: cannot load {cert_file}: {e}") from None
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    except (OSError, ValueError, TypeError) as e:
        raise TLSConfigError(f"TLS_KEY: cannot load {key_file} (an unencrypted PEM key is "
                             f"needed): {e}") from None
    ours = certs[0].public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TLSConfigError("TLS_KEY does not belong to the first certificate of TLS_CERT")
    return ssl.CertificateOptions(privateKey=key, certificate=certs[0],
                                  extraCertChain=certs[1:])
