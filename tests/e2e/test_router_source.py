"""NeutronRouterSource reads a real router from the real Neutron 29 test bed."""

from __future__ import annotations

import contextlib
import ipaddress
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import openstack
import pytest

from astara.drivers.router import ManagementPort, NeutronRouterSource, plugged_ports, render
from astara.wire.document import problems

pytestmark = pytest.mark.e2e

MGMT = ManagementPort(
    network_id="mgmt",
    mac="fa:16:3e:00:00:01",
    addresses=(ipaddress.ip_interface("fdca:3ba5:a17a:acda::10/64"),),
)


@dataclass
class Topology:
    router_id: str
    public_id: str
    private_id: str
    vm_port_id: str
    vm_mac: str
    vm_ip: str


@pytest.fixture
def topology(sdk: openstack.connection.Connection, project_id: str) -> Iterator[Topology]:
    net = sdk.network
    with contextlib.ExitStack() as undo:
        public = net.create_network(
            name="public",
            project_id=project_id,
            is_router_external=True,
            provider_network_type="flat",
            provider_physical_network="tD" + project_id[:8],
        )
        undo.callback(net.delete_network, public, ignore_missing=True)
        net.create_subnet(
            network_id=public.id,
            cidr="198.51.100.0/24",
            ip_version=4,
            is_dhcp_enabled=False,
            project_id=project_id,
        )
        private = net.create_network(name="private", project_id=project_id)
        undo.callback(net.delete_network, private, ignore_missing=True)
        v4 = net.create_subnet(
            network_id=private.id, cidr="10.20.0.0/24", ip_version=4, project_id=project_id
        )
        router = net.create_router(
            name="r",
            project_id=project_id,
            external_gateway_info={"network_id": public.id, "enable_snat": False},
        )
        undo.callback(net.delete_router, router, ignore_missing=True)
        net.add_interface_to_router(router, subnet=v4.id)
        undo.callback(net.remove_interface_from_router, router, subnet=v4.id)
        vm = net.create_port(
            network_id=private.id,
            project_id=project_id,
            device_owner="compute:nova",
            device_id=str(uuid.uuid4()),
        )
        undo.callback(net.delete_port, vm, ignore_missing=True)
        fip = net.create_ip(floating_network_id=public.id, port_id=vm.id, project_id=project_id)
        undo.callback(net.delete_ip, fip, ignore_missing=True)
        yield Topology(
            router.id,
            public.id,
            private.id,
            vm.id,
            vm.mac_address,
            vm.fixed_ips[0]["ip_address"],
        )


def test_fetch_reads_the_whole_router(
    sdk: openstack.connection.Connection, topology: Topology
) -> None:
    snapshot = NeutronRouterSource(sdk).fetch(topology.router_id)
    assert snapshot is not None
    assert snapshot.router.id == topology.router_id
    assert snapshot.gateway_port is not None
    assert snapshot.gateway_port.network_id == topology.public_id
    assert [p.network_id for p in snapshot.interface_ports] == [topology.private_id]
    assert topology.vm_port_id in {p.id for p in snapshot.network_ports}
    assert {n.id for n in snapshot.networks} == {topology.public_id, topology.private_id}
    assert [str(f.fixed_ip_address) for f in snapshot.floating_ips] == [topology.vm_ip]
    assert snapshot.port_forwardings == []
    assert len(plugged_ports(snapshot)) == 2

    config = render(snapshot, 1, MGMT)
    assert problems(config) == []
    assert config.snat_enabled is False
    private = next(n for n in config.networks if n.id == topology.private_id)
    assert [a.mac for a in private.allocations] == [topology.vm_mac]
    assert len(config.floating_ips) == 1


def test_fetch_answers_none_for_a_router_that_is_gone(
    sdk: openstack.connection.Connection, project_id: str
) -> None:
    source = NeutronRouterSource(sdk)
    assert source.fetch(str(uuid.uuid4())) is None
    router = sdk.network.create_router(name="short-lived", project_id=project_id)
    assert source.fetch(router.id) is not None
    sdk.network.delete_router(router)
    assert source.fetch(router.id) is None
