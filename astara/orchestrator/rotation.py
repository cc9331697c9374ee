"""Certificates renewed before they expire, without downtime.

The orchestrator's client certificate and each appliance's server certificate come from the
orchestrator's CA, which every peer trusts; once past ``tls.RENEW_AFTER`` of its lifetime, each
is replaced by a new key and certificate from that CA. Peers accept the new one at once and the
old one until it expires, so no call waits for a switch:

- the client identity (key and certificate in one file) is replaced in one rename; every
  process loads it again on its next call (``appliance_client`` keys its TLS context on the
  file);
- an appliance gets its new pair over its API (``PUT /v1/credentials``, mutual TLS) and serves
  it on its next connection. Its current certificate is read from a TLS connection, so the
  store keeps nothing about it and an appliance booted long ago is renewed like any other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from astara.common.tls import CertificateAuthority, identity_renewal_due, renewal_due
from astara.orchestrator.appliance_client import ApplianceClient, ApplianceError
from astara.orchestrator.store import InstanceRecord

LOG = logging.getLogger(__name__)

CLIENT_IDENTITY_FILE = "orchestrator-client.pem"
# Before the identity file held the key too: removed once a renewal has made the new one.
OLD_CLIENT_KEY_FILE = "orchestrator-client.key"


def renew_client_identity(ca: CertificateAuthority, path: Path, now: datetime) -> bool:
    """Issue the orchestrator's client identity when it is missing or due at ``now``; True
    when it did. (``now`` decides; certificates are stamped with the real time, which peers
    check them against.)"""
    if not identity_renewal_due(path, now):
        return False
    ca.issue("astara-orchestrator", "client").write_identity(path)
    (path.parent / OLD_CLIENT_KEY_FILE).unlink(missing_ok=True)
    LOG.info("client certificate for the appliances issued (%s)", path)
    return True


class CertificateRotation:
    """Checks every ``interval`` seconds, on a thread of its own, what is due (``check``) at
    the time ``clock`` tells."""

    def __init__(
        self,
        ca: CertificateAuthority,
        identity: Path,
        instances: Callable[[], Iterable[InstanceRecord]],
        clients: Callable[[str], ApplianceClient],
        clock: Callable[[], datetime],
        interval: float,
    ) -> None:
        self._ca = ca
        self._identity = identity
        self._instances = instances
        self._clients = clients
        self._clock = clock
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="certificates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> list[str]:
        """Renew what is due now; the ids of the instances renewed."""
        now = self._clock()
        renew_client_identity(self._ca, self._identity, now)
        return [
            instance.id
            for instance in self._instances()
            if instance.management_address
            and instance.ever_reachable
            and self._renew_instance(instance, now)
        ]

    def _renew_instance(self, instance: InstanceRecord, now: datetime) -> bool:
        address = instance.management_address or ""
        try:
            with self._clients(address) as client:
                if not renewal_due(client.server_certificate(), now):
                    return False
                issued = self._ca.issue(f"appliance-{instance.id}", "server", [address])
                client.put_credentials(issued)
        except ApplianceError as exc:
            LOG.warning(
                "router %s: instance %s: certificate not renewed: %s",
                instance.router_id,
                instance.id,
                exc,
            )
            return False
        LOG.info("router %s: instance %s: certificate renewed", instance.router_id, instance.id)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # the next check tries again; renewal starts long before expiry
                LOG.exception("certificate renewal check failed")
