"""The CA helpers and the mutual-TLS contexts, with real handshakes over a socket pair."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from astara.common.tls import CertificateAuthority, client_context, server_context

pytestmark = pytest.mark.unit


def _files(tmp: Path, ca: CertificateAuthority, stem: str, role: str) -> tuple[Path, Path, Path]:
    issued = ca.issue(stem, role, ips=["127.0.0.1"], dns_names=["appliance.test"])  # type: ignore[arg-type]
    cert, key, ca_path = tmp / f"{stem}.pem", tmp / f"{stem}.key", tmp / f"{stem}-ca.pem"
    issued.write(cert, key)
    ca_path.write_bytes(ca.cert_pem)
    return cert, key, ca_path


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext | None) -> tuple[object, object]:
    """Run both ends of one TLS connection; return what each end got (bytes or an exception)."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    results: dict[str, object] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.sendall(b"hello")
                results["server"] = b"sent"
        except (ssl.SSLError, OSError) as exc:
            results["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        if client is None:
            right.sendall(b"GET / HTTP/1.0\r\n\r\n")
            results["client"] = right.recv(100)
        else:
            with client.wrap_socket(right, server_hostname="appliance.test") as tls:
                results["client"] = tls.recv(5)
    except (ssl.SSLError, OSError) as exc:
        results["client"] = exc
    finally:
        thread.join(5)
        right.close()
    return results["server"], results["client"]


def test_ca_is_created_once_with_private_key_and_reused(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    mode = stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode)
    again = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert mode == 0o600
    assert again.cert.serial_number == first.cert.serial_number
    assert again.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_issued_certificate_carries_ip_and_dns_names(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    issued = ca.issue("r1", "server", ips=["fdca::5", "10.0.0.5"], dns_names=["r1.test"])
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["fdca::5", "10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["r1.test"]
    assert cert.issuer == ca.cert.subject


def test_client_from_same_ca_completes_mutual_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server = server_context(*_files(tmp_path, ca, "server", "server"))
    client = client_context(*_files(tmp_path, ca, "client", "client"))
    assert _handshake(server, client) == (b"sent", b"hello")


def test_client_cert_from_another_ca_is_refused_at_handshake(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
    server = server_context(*_files(tmp_path, ca, "server", "server"))
    rogue_cert, rogue_key, _ = _files(tmp_path, rogue, "rogue", "client")
    # The rogue client trusts the real CA (it can verify the server) but holds a foreign cert.
    client = client_context(rogue_cert, rogue_key, tmp_path / "server-ca.pem")
    server_result, client_result = _handshake(server, client)
    assert isinstance(server_result, ssl.SSLError)
    assert "certificate verify failed" in str(server_result)
    assert isinstance(client_result, (ssl.SSLError, OSError))


def test_client_without_certificate_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server_cert, server_key, ca_path = _files(tmp_path, ca, "server", "server")
    server = server_context(server_cert, server_key, ca_path)
    anonymous = ssl.create_default_context(cafile=str(ca_path))
    server_result, client_result = _handshake(server, anonymous)
    assert isinstance(server_result, ssl.SSLError)
    assert isinstance(client_result, (ssl.SSLError, OSError))


def test_client_refuses_server_from_another_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
    server = server_context(*_files(tmp_path, rogue, "server", "server"))
    client = client_context(*_files(tmp_path, ca, "client", "client"))
    _, client_result = _handshake(server, client)
    assert isinstance(client_result, ssl.SSLCertVerificationError)
