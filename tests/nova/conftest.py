"""Fixtures of the tests against the OpenStack bed: clouds by user, images, tenant networks."""

from __future__ import annotations

import ipaddress
import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest

from astara.testing.nova_box import build_image
from astara.testing.openstack_bed import operator
from astara.testing.openstack_bed.bed import OpenStackBed

_subnets = itertools.count(1)


@pytest.fixture(scope="session")
def admin(openstack_bed: OpenStackBed) -> openstack.connection.Connection:
    return openstack_bed.connect("astara-admin")


@pytest.fixture(scope="session")
def demo(openstack_bed: OpenStackBed) -> openstack.connection.Connection:
    """A member of the demo project: boots servers as a tenant would."""
    return openstack_bed.connect("demo-member")


@pytest.fixture(scope="session")
def service(openstack_bed: OpenStackBed) -> openstack.connection.Connection:
    """Astara's own user (admin and service roles in the service project)."""
    return openstack_bed.connect("astara-service")


@pytest.fixture(scope="session")
def blank_image(admin: openstack.connection.Connection, tmp_path_factory: Any) -> str:
    """A blank raw disk: QEMU stops in SeaBIOS, enough to show ports bound and plugged."""
    path = tmp_path_factory.mktemp("images") / "blank.raw"
    path.write_bytes(bytes(1 << 20))
    return operator.upload_image(admin, path, "astara-test-blank")


@pytest.fixture(scope="session")
def workload_image(admin: openstack.connection.Connection) -> str:
    """The busybox workload image from ``astara-image build --profile workload``.

    ASTARA_WORKLOAD_IMAGE names a qcow2 already built; otherwise the image builder of this
    checkout builds it (or finds it in its cache).
    """
    given = os.environ.get("ASTARA_WORKLOAD_IMAGE")
    path = Path(given) if given else build_image("workload")
    return operator.upload_image(admin, path, "astara-test-workload")


@dataclass(frozen=True)
class TenantNet:
    network_id: str
    subnet_id: str
    cidr: ipaddress.IPv4Network


@pytest.fixture
def tenant_net(demo: openstack.connection.Connection) -> Iterator[TenantNet]:
    """A fresh VXLAN network with an IPv4 subnet (no DHCP: Astara is the DHCP service)."""
    cidr = ipaddress.IPv4Network(f"10.{200 + next(_subnets) % 50}.{uuid.uuid4().int % 250}.0/24")
    net = demo.network.create_network(name="t-" + uuid.uuid4().hex[:6])
    subnet = demo.network.create_subnet(
        network_id=net.id, ip_version=4, cidr=str(cidr), is_dhcp_enabled=False
    )
    yield TenantNet(net.id, subnet.id, cidr)
    for port in demo.network.ports(network_id=net.id):
        demo.network.delete_port(port, ignore_missing=True)
    demo.network.delete_network(net, ignore_missing=True)
