"""The OpenStack bed is a real cloud: Keystone guards every API, Nova boots servers under QEMU
whose ports Neutron's own OVS agent binds and wires, and deletes leave nothing behind."""

from __future__ import annotations

import time

import httpx
import openstack
import pytest

from astara.common.processes import is_alive, process_state
from astara.testing.netns import wait_for
from astara.testing.openstack_bed.bed import OpenStackBed
from astara.testing.openstack_bed.probes import (
    boot,
    domains,
    link_exists,
    ovs_port,
    qemu_pid,
    tap_name,
)
from tests.nova.conftest import TenantNet

pytestmark = pytest.mark.nova

PROTECTED = {
    "nova-api": "/v2.1/servers",
    "neutron-api": "/v2.0/networks",
    "glance": "/v2/images",
    "placement": "/resource_providers",
}


def test_every_api_refuses_a_request_without_a_keystone_token(
    openstack_bed: OpenStackBed, admin: openstack.connection.Connection
) -> None:
    info = openstack_bed.info()
    assert info is not None
    token = admin.session.get_token()
    for name, path in PROTECTED.items():
        url = info.urls[name] + path
        assert httpx.get(url, timeout=10).status_code == 401, f"{name} answered without a token"
        bogus = httpx.get(url, headers={"X-Auth-Token": "not-a-token"}, timeout=10)
        assert bogus.status_code == 401, f"{name} accepted a bogus token"
        good = httpx.get(
            url,
            headers={"X-Auth-Token": token, "OpenStack-API-Version": "placement 1.14"},
            timeout=10,
        )
        assert good.status_code == 200, f"{name} refused the admin's token: {good.text[:200]}"


def test_up_again_is_harmless(openstack_bed: OpenStackBed) -> None:
    before = openstack_bed.status()
    started = time.monotonic()
    info = OpenStackBed(state_dir=openstack_bed.state_dir, name=openstack_bed.name).up()
    assert time.monotonic() - started < 15
    assert info == openstack_bed.info()
    assert openstack_bed.status() == before


def _port(admin: openstack.connection.Connection, port_id: str) -> openstack.network.v2.port.Port:
    return admin.network.get_port(port_id)


def test_a_server_boots_and_takes_a_second_port_bound_and_wired_by_the_ovs_agent(
    openstack_bed: OpenStackBed,
    admin: openstack.connection.Connection,
    demo: openstack.connection.Connection,
    blank_image: str,
    tenant_net: TenantNet,
) -> None:
    info = openstack_bed.info()
    assert info is not None
    first = demo.network.create_port(network_id=tenant_net.network_id)
    second = demo.network.create_port(network_id=tenant_net.network_id)
    server = boot(demo, "bed-vm", blank_image, "astara.tiny", [first.id])
    try:
        bound = _port(admin, first.id)
        assert bound.binding_vif_type == "ovs"
        assert bound.binding_host_id == info.host
        assert bound.status == "ACTIVE"
        assert bound.device_id == server.id
        tap = ovs_port(tap_name(first.id))
        assert tap is not None, "no tap on OVS for the server's port"
        assert tap.bridge == "br-int"
        assert isinstance(tap.tag, int)
        assert tap.other_config["net_uuid"] == tenant_net.network_id
        assert tap.external_ids["iface-id"] == first.id
        domain = admin.compute.get_server(server.id).instance_name
        assert domain in domains()
        qemu = qemu_pid(domain)
        assert is_alive(qemu)

        demo.compute.create_server_interface(server, port_id=second.id)
        attached = wait_for(
            lambda: (p := _port(admin, second.id)).status == "ACTIVE" and p.device_id == server.id,
            120,
            "the attached port ACTIVE",
            interval=0.5,
        )
        assert attached
        second_tap = ovs_port(tap_name(second.id))
        assert second_tap is not None and second_tap.tag == tap.tag

    finally:
        demo.compute.delete_server(server, ignore_missing=True)
        demo.compute.wait_for_delete(server, interval=0.5, wait=120)
    assert not link_exists(tap_name(first.id))
    assert ovs_port(tap_name(first.id)) is None
    assert domain not in domains()
    # Reaped, not a zombie: libvirt takes a zombie QEMU for alive and every later destroy of
    # it waits, until Nova's calls pile up behind it.
    assert process_state(qemu) is None
