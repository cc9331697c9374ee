"""Fixtures shared by the whole suite: the real Neutron test bed and a fresh project per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import openstack
import pytest

from astara.testing import services
from astara.testing.keystone_access import KeystoneAccess
from astara.testing.neutron_bed import Endpoint, NeutronTestbed, connect

# The suite's own bed, so a bed brought up by hand with astara-testbed is left alone.
TEST_BED_DIR = Path(os.environ.get("ASTARA_TEST_BED_DIR", "/var/lib/astara/testbed-tests"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needs_root = [
        i for i in items if any(i.get_closest_marker(m) for m in ("functional", "e2e", "browser"))
    ]
    if needs_root and os.geteuid() != 0:
        raise pytest.UsageError(
            "functional, e2e and browser tests need root (network namespaces, daemons): run "
            "as root, or select the unit tests alone with -m unit"
        )


@pytest.fixture(scope="session")
def neutron() -> Iterator[Endpoint]:
    """A real neutron-server, up for the whole session and stopped at its end."""
    services.ensure_all()
    bed = NeutronTestbed(state_dir=TEST_BED_DIR, database="astara_neutron_test")
    endpoint = bed.up()
    yield endpoint
    bed.down()


@pytest.fixture(scope="session")
def sdk(neutron: Endpoint) -> openstack.connection.Connection:
    return connect(neutron.url)


@pytest.fixture
def project_id() -> str:
    """A fresh project per test, so tests never see each other's resources."""
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def keystone() -> KeystoneAccess:
    """A real Keystone 30 with admin, member and reader users: the OpenStack bed's, up once
    for the session (ASTARA_TEST_KEYSTONE_CLOUDS may name the clouds.yaml of one that runs)."""
    path = os.environ.get("ASTARA_TEST_KEYSTONE_CLOUDS")
    if not path:
        try:
            from astara.testing.openstack_bed.bed import OpenStackBed
        except ImportError as exc:  # the bed is not on this branch yet
            raise RuntimeError(
                "no Keystone: set ASTARA_TEST_KEYSTONE_CLOUDS to the clouds.yaml of a running "
                "one (users astara-admin, astara-service, demo-admin, demo-member, demo-reader)"
            ) from exc
        path = OpenStackBed().up().clouds_yaml
    access = KeystoneAccess(Path(path))
    access.connect().authorize()  # fails loudly when that Keystone is not up
    return access
