"""Certificates renewed for real (issue #12, item 12): a netns appliance over mutual TLS takes
a new certificate from the orchestrator's rotation, a moved clock making it due, while its API
keeps answering new connections throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from astara.common.tls import LEAF_VALIDITY, CertificateAuthority
from astara.orchestrator.appliance_client import ApplianceClient, ApplianceError, Unreachable
from astara.orchestrator.rotation import CertificateRotation, renew_client_identity
from astara.orchestrator.store import InstanceRecord
from astara.providers.base import InstanceSpec, PortSpec
from astara.providers.netns import NetnsProvider

pytestmark = [pytest.mark.functional, pytest.mark.security]

PREFIX = "tR"
SUBNET = "fdca:3ba5:a17a:52::/64"  # not the default: other test beds may hold that one
SPEC = InstanceSpec(
    instance_id="rot-1",
    router_id="router-rot",
    ports=(
        PortSpec(port_id="p-mgmt", network_id="n-mgmt", mac="02:52:00:00:00:01", kind="management"),
    ),
)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[NetnsProvider]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    provider = NetnsProvider(tmp_path / "state", ca, prefix=PREFIX, management_subnet=SUBNET)
    try:
        yield provider
    finally:
        provider.teardown()


def test_an_appliance_certificate_is_renewed_without_a_failed_call(
    provider: NetnsProvider, tmp_path: Path
) -> None:
    identity = tmp_path / "orchestrator-client.pem"
    now = datetime.now(UTC)
    renew_client_identity(provider.ca, identity, now)
    first_identity = identity.read_bytes()
    files = {"ca": tmp_path / "ca" / "ca.pem", "cert": identity, "key": identity}

    def client(address: str) -> ApplianceClient:
        return ApplianceClient(address, ca=files["ca"], cert=files["cert"], key=files["key"])

    instance = provider.boot(SPEC)
    address = instance.management_address
    deadline = datetime.now(UTC).timestamp() + 30
    while True:
        try:
            with client(address) as api:
                before = api.server_certificate()
            break
        except Unreachable:
            assert datetime.now(UTC).timestamp() < deadline, "the appliance never answered"
            time.sleep(0.1)

    calls, failures = [0], []
    stop = threading.Event()

    def keep_calling() -> None:  # a new connection each time: each handshake is checked
        while not stop.is_set():
            try:
                with client(address) as api:
                    api.health()
                calls[0] += 1
            except ApplianceError as exc:
                failures.append(exc)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    clock = [now]
    record = InstanceRecord(SPEC.instance_id, SPEC.router_id, "netns", SPEC.instance_id,
                            address, 1, "up", True, None, now.replace(tzinfo=None))  # fmt: skip
    rotation = CertificateRotation(
        provider.ca, identity, lambda: [record], client, lambda: clock[0], interval=3600
    )
    try:
        assert rotation.check() == []  # not due: nothing sent
        clock[0] = now + LEAF_VALIDITY * 0.6
        assert rotation.check() == [SPEC.instance_id]
        with client(address) as api:
            after = api.server_certificate()
        started, waited = calls[0], time.monotonic() + 10
        while calls[0] < started + 5:  # calls go on after the switch too
            assert time.monotonic() < waited, "calls stopped after the switch"
            time.sleep(0.05)
    finally:
        stop.set()
        caller.join()
    assert not failures, failures
    assert after.serial_number != before.serial_number
    san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [address]
    # The client identity was due too: renewed, and used by the calls since.
    assert identity.read_bytes() != first_identity
    # Saved where the appliance reads it at its next start.
    directory = provider.state_dir / provider.names.instance_ns(SPEC.instance_id)
    saved = x509.load_pem_x509_certificate((directory / "appliance.pem").read_bytes())
    assert saved.serial_number == after.serial_number
