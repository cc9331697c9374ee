"""The orchestrator's certificate authority and the TLS contexts of its management channels.

Every appliance API call is mutual TLS: the appliance presents a certificate issued by this CA
and accepts only clients holding one too. The CA lives in a directory (key 0600) created on
first use and reused afterwards, so restarting the orchestrator keeps every issued
certificate valid.

Leaf certificates (the orchestrator's client certificate, each appliance's server certificate)
are replaced once past ``RENEW_AFTER`` of their lifetime: a new key and certificate from the
same CA, which every peer accepts at once, so nothing waits for the switch.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from astara.common.files import write_private_atomic

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)
# Half the lifetime: a renewal that keeps failing leaves more than a year to be noticed.
RENEW_AFTER = 0.5
# Issued "now" minus a little, so a peer whose clock is slightly behind accepts it.
CLOCK_SKEW = datetime.timedelta(minutes=5)

Role = Literal["server", "client"]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        _write_private(key_path, self.key_pem)

    def write_identity(self, path: Path) -> None:
        """Key and certificate in one file, replaced in one step (0600): a reader never sees
        a new certificate with an old key."""
        write_private_atomic(path, self.key_pem + self.cert_pem)


def renewal_due(cert: x509.Certificate, now: datetime.datetime) -> bool:
    """Whether ``cert`` is past ``RENEW_AFTER`` of its lifetime (or not valid at all) at
    ``now``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return not start <= now < start + (end - start) * RENEW_AFTER


def identity_renewal_due(path: Path, now: datetime.datetime) -> bool:
    """Whether the identity file (see ``Issued.write_identity``) is missing, holds no key, or
    its certificate is due for renewal."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return True
    if b"PRIVATE KEY-----" not in pem:
        return True
    return renewal_due(x509.load_pem_x509_certificate(pem), now)


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: the key must never be readable, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Astara"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """A CA key and self-signed certificate kept in ``directory``."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "Astara CA") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        role: Role,
        ips: Sequence[IpAddress | str] = (),
        dns_names: Sequence[str] = (),
        now: datetime.datetime | None = None,
    ) -> Issued:
        """A leaf certificate for a server (an appliance) or a client (the orchestrator),
        valid from ``now`` (the current time by default)."""
        key = _new_key()
        now = now or datetime.datetime.now(datetime.UTC)
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [
            x509.DNSName(name) for name in dns_names
        ]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS for a server that accepts only clients with a certificate from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(cert), str(key))
    return context


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS for a client presenting its certificate and trusting only servers from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context
