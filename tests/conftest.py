"""Fixtures shared by the whole suite: the real test beds and a fresh project per test."""

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
from astara.testing.openstack_bed.bed import OpenStackBed

# The suite's own beds, so a bed brought up by hand with astara-testbed is left alone.
TEST_BED_DIR = Path(os.environ.get("ASTARA_TEST_BED_DIR", "/var/lib/astara/testbed-tests"))
TEST_CLOUD_BED_DIR = Path(
    os.environ.get("ASTARA_TEST_CLOUD_BED_DIR", "/var/lib/astara/cloudbed-tests")
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needs_root = [
        i
        for i in items
        if any(i.get_closest_marker(m) for m in ("functional", "e2e", "browser", "nova"))
    ]
    if needs_root and os.geteuid() != 0:
        raise pytest.UsageError(
            "functional, e2e, browser and nova tests need root (namespaces, daemons, VMs): run "
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


@pytest.fixture(scope="session")
def openstack_bed() -> Iterator[OpenStackBed]:
    """The whole OpenStack bed, up once for the session; its end checks that nothing is left."""
    services.ensure_all()
    bed = OpenStackBed(state_dir=TEST_CLOUD_BED_DIR, name="cloudbed_test")
    bed.up()
    yield bed
    bed.down()
    leftovers = bed.leftovers()
    assert leftovers == [], f"the OpenStack bed's down left {leftovers}"


@pytest.fixture
def project_id() -> str:
    """A fresh project per test, so tests never see each other's resources."""
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def keystone(request: pytest.FixtureRequest) -> KeystoneAccess:
    """A real Keystone 30 with admin, member and reader users: the suite's OpenStack bed's (one
    bed per machine, shared with the nova tests), or the one whose clouds.yaml
    ASTARA_TEST_KEYSTONE_CLOUDS names."""
    path = os.environ.get("ASTARA_TEST_KEYSTONE_CLOUDS")
    if not path:
        bed: OpenStackBed = request.getfixturevalue("openstack_bed")
        path = str(bed.clouds_yaml)
    access = KeystoneAccess(Path(path))
    access.connect().authorize()  # fails loudly when that Keystone is not up
    return access
