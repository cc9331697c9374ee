"""This appliance's TLS identity, replaced while it serves (``PUT /v1/credentials``).

A new certificate and key are first checked the way the orchestrator will check them: a TLS
handshake in memory, from a client trusting the CA this appliance trusts, to the management
address it listens on (the pair must match; the certificate must come from that CA, be valid
now and name the address). Then they are saved, so that a restart serves them, and loaded into
the serving context: new connections get them, open ones keep theirs. Saving is two files
replaced one after the other, so both go first into one pending file, and a start finishes a
replacement that a crash interrupted.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from astara.common.files import write_private_atomic

CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
HANDSHAKE_ROUNDS = 8


class CredentialsRefused(ValueError):
    """The pair would not work; the message says why (never a key)."""


@dataclass
class TlsIdentity:
    cert: Path
    key: Path
    ca: Path
    address: str  # the management address clients connect to
    context: ssl.SSLContext | None = field(default=None, repr=False)  # the serving one

    @property
    def _pending(self) -> Path:
        return self.cert.with_name(f".{self.cert.name}.pending")

    def install(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Check, save and serve a new pair; CredentialsRefused (nothing changed) when it
        would not work."""
        if CERT_MARKER not in cert_pem or b"PRIVATE KEY-----" not in key_pem:
            raise CredentialsRefused("cert must be a PEM certificate and key a PEM private key")
        check_pair(cert_pem, key_pem, self.ca, self.address)
        write_private_atomic(self._pending, key_pem + cert_pem)
        self.finish_pending()
        if self.context is not None:
            self.context.load_cert_chain(self.cert, self.key)

    def finish_pending(self) -> None:
        """Complete a replacement a crash interrupted (at start: before serving)."""
        try:
            both = self._pending.read_bytes()
        except FileNotFoundError:
            return
        split = both.index(CERT_MARKER)
        write_private_atomic(self.key, both[:split])
        write_private_atomic(self.cert, both[split:])
        self._pending.unlink()


def check_pair(cert_pem: bytes, key_pem: bytes, ca: Path, address: str) -> None:
    """CredentialsRefused unless a client trusting ``ca`` accepts ``cert_pem`` (with its key
    ``key_pem``) for ``address``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="astara-credentials-") as scratch:  # 0700
        candidate = Path(scratch) / "candidate.pem"
        write_private_atomic(candidate, key_pem + cert_pem)
        try:
            server.load_cert_chain(candidate)
        except ssl.SSLError as exc:
            raise CredentialsRefused(
                f"the key and the certificate do not go together: {exc}"
            ) from None
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    _handshake(client, server, address)


def _handshake(client_context: ssl.SSLContext, server_context: ssl.SSLContext, name: str) -> None:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=name)
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(HANDSHAKE_ROUNDS):
        try:
            client.do_handshake()
            return
        except ssl.SSLCertVerificationError as exc:
            raise CredentialsRefused(
                f"a client trusting this appliance's CA would refuse it: {exc.verify_message}"
            ) from None
        except ssl.SSLWantReadError:
            pass
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            raise CredentialsRefused(f"the TLS handshake failed: {exc}") from None
    raise CredentialsRefused("the TLS handshake with the new certificate did not complete")
