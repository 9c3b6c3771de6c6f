"""Self-signed certificates for the tests' TLS peers and kubeconfigs, and the server side of TLS."""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    cn: str = "test-ca", dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """A CA certificate for ``cn`` (valid from a day ago to a day ahead, with ``dns_names`` and
    ``ip_addresses`` as its subject alternative names) and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), key_pem


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context presenting ``cert_pem`` (ssl loads a chain only from files)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        context.load_cert_chain(cert, key)
    return context


@dataclass(frozen=True)
class LoopbackTls:
    """One certificate for the HTTPS fakes of a run on 127.0.0.1 (the moto server, the Qualys gateway):
    the clients trust it as their CA bundle (``AWS_CA_BUNDLE`` for botocore, ``SSL_CERT_FILE`` for httpx)."""

    certificate: Path
    key: Path

    @classmethod
    def create(cls, folder: Path) -> LoopbackTls:
        cert, key = self_signed("cdr-policy loopback", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "loopback.pem").write_bytes(cert)
        (folder / "loopback.key").write_bytes(key)
        (folder / "loopback.key").chmod(0o600)
        return cls(folder / "loopback.pem", folder / "loopback.key")

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.certificate.read_bytes(), self.key.read_bytes())

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts these fakes (for httpx)."""
        return ssl.create_default_context(cafile=str(self.certificate))

    @property
    def client_env(self) -> dict[str, str]:
        """What a process needs to trust these fakes."""
        return {"AWS_CA_BUNDLE": str(self.certificate), "SSL_CERT_FILE": str(self.certificate)}
