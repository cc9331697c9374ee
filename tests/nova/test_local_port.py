"""The orchestrator host's management port, made by ensure_local_port on the real cloud: Neutron
binds it to this host, the OVS agent wires it like a VM port, and the host namespace holds its
MAC and address."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator

import openstack
import pytest

from astara.orchestrator.local_port import (
    DEVICE_OWNER,
    LocalPort,
    ManagementSettings,
    OvsInterfaceDriver,
    ensure_local_port,
    plan,
    remove_local_port,
)
from astara.testing.openstack_bed.bed import OpenStackBed
from astara.testing.openstack_bed.probes import boot, link_exists, ovs_port, tap_name

pytestmark = pytest.mark.nova


@pytest.fixture
def settings(openstack_bed: OpenStackBed) -> ManagementSettings:
    info = openstack_bed.info()
    assert info is not None
    return ManagementSettings(
        network_id=str(info.management["network_id"]),
        subnet_id=info.management["subnet_id"],
        host=info.host,
        integration_bridge="br-int",
        interface_name="astara-mgmt",
        port_active_timeout=60,
    )


@pytest.fixture
def local(
    service: openstack.connection.Connection, settings: ManagementSettings
) -> Iterator[LocalPort]:
    driver = OvsInterfaceDriver()
    made = ensure_local_port(service.network, driver, settings)
    yield made
    remove_local_port(service.network, driver, settings)


def _host_link(name: str) -> dict[str, object]:
    shown = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True, check=True
    )
    link: dict[str, object] = json.loads(shown.stdout)[0]
    return link


def _global_addresses(link: dict[str, object]) -> set[str]:
    infos = link["addr_info"]
    assert isinstance(infos, list)
    return {f"{a['local']}/{a['prefixlen']}" for a in infos if a["scope"] == "global"}


def test_the_local_port_is_active_and_wired_like_a_vm_port(
    admin: openstack.connection.Connection, settings: ManagementSettings, local: LocalPort
) -> None:
    port = admin.network.get_port(local.port_id)
    assert port.status == "ACTIVE"
    assert port.binding_vif_type == "ovs"
    assert port.binding_host_id == settings.host
    assert port.device_owner == DEVICE_OWNER
    link = _host_link(local.name)
    assert link["address"] == port.mac_address == local.mac
    fixed = port.fixed_ips[0]["ip_address"]
    assert ipaddress.ip_address(fixed) in ipaddress.ip_network(
        admin.network.get_subnet(settings.subnet_id).cidr
    )
    assert _global_addresses(link) == {f"{fixed}/64"} == set(local.addresses)
    wired = ovs_port(local.name)
    assert wired is not None and wired.bridge == "br-int"
    assert isinstance(wired.tag, int)
    assert wired.other_config["net_uuid"] == settings.network_id


def test_a_second_run_changes_nothing_and_a_wrong_mac_or_address_is_corrected(
    service: openstack.connection.Connection, settings: ManagementSettings, local: LocalPort
) -> None:
    driver = OvsInterfaceDriver()
    assert plan(local, settings.integration_bridge, driver.observe(local.name)) == []
    assert ensure_local_port(service.network, driver, settings) == local

    driver.set_mac(local.name, "02:00:5e:00:53:01")
    driver.remove_address(local.name, local.addresses[0])
    driver.add_address(local.name, "fd00:dead:beef::1/64")
    assert ensure_local_port(service.network, driver, settings) == local
    link = _host_link(local.name)
    assert link["address"] == local.mac
    assert _global_addresses(link) == set(local.addresses)


def test_a_server_on_the_management_network_shares_the_local_ports_vlan(
    admin: openstack.connection.Connection,
    service: openstack.connection.Connection,
    settings: ManagementSettings,
    local: LocalPort,
    blank_image: str,
) -> None:
    vm_port = service.network.create_port(network_id=settings.network_id)
    server = boot(service, "mgmt-vm", blank_image, "astara.tiny", [vm_port.id])
    try:
        assert admin.network.get_port(vm_port.id).status == "ACTIVE"
        vm_tap, host_side = ovs_port(tap_name(vm_port.id)), ovs_port(local.name)
        assert vm_tap is not None and host_side is not None
        assert vm_tap.tag == host_side.tag
    finally:
        service.compute.delete_server(server, ignore_missing=True)
        service.compute.wait_for_delete(server, interval=0.5, wait=120)
        service.network.delete_port(vm_port, ignore_missing=True)


def test_remove_takes_the_interface_and_the_port_away(
    service: openstack.connection.Connection, settings: ManagementSettings
) -> None:
    driver = OvsInterfaceDriver()
    made = ensure_local_port(service.network, driver, settings)
    assert link_exists(made.name)
    remove_local_port(service.network, driver, settings)
    assert not link_exists(made.name)
    assert ovs_port(made.name) is None
    assert service.network.find_port(made.port_id) is None
