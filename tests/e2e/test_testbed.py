"""The Neutron test bed is real: its API creates resources and it announces them on RabbitMQ."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import openstack
import pytest

from astara.testing.neutron_bed import Endpoint, NeutronTestbed, process_alive
from astara.testing.notifications import Notification, NotificationRecorder

pytestmark = pytest.mark.e2e


@pytest.fixture
def recorder(neutron: Endpoint) -> Iterator[NotificationRecorder]:
    rec = NotificationRecorder().start()
    yield rec
    rec.stop()


def _is(event_type: str, key: str, resource_id: str) -> Callable[[Notification], bool]:
    def match(n: Notification) -> bool:
        return n.event_type == event_type and n.payload.get(key, {}).get("id") == resource_id

    return match


def test_router_topology_is_created_and_announced(
    sdk: openstack.connection.Connection, project_id: str, recorder: NotificationRecorder
) -> None:
    net = sdk.network.create_network(name="tenant", project_id=project_id)
    subnet = sdk.network.create_subnet(
        network_id=net.id, cidr="10.10.0.0/24", ip_version=4, project_id=project_id
    )
    public = sdk.network.create_network(
        name="public-" + project_id[:6],
        project_id=project_id,
        is_router_external=True,
        provider_network_type="flat",
        provider_physical_network="public-" + project_id[:6],
    )
    sdk.network.create_subnet(
        network_id=public.id, cidr="172.24.4.0/24", ip_version=4, project_id=project_id
    )
    router = sdk.network.create_router(name="r1", project_id=project_id)
    iface = sdk.network.add_interface_to_router(router, subnet=subnet.id)
    router = sdk.network.update_router(router, external_gateway_info={"network_id": public.id})
    port = sdk.network.create_port(network_id=net.id, project_id=project_id)
    fip = sdk.network.create_ip(
        floating_network_id=public.id, port_id=port.id, project_id=project_id
    )

    assert router.external_gateway_info["network_id"] == public.id
    assert fip.fixed_ip_address == port.fixed_ips[0]["ip_address"]
    assert fip.router_id == router.id

    recorder.wait_for(_is("network.create.end", "network", net.id))
    recorder.wait_for(_is("subnet.create.end", "subnet", subnet.id))
    recorder.wait_for(_is("router.create.end", "router", router.id))
    added = recorder.wait_for(lambda n: n.event_type == "router.interface.create")
    assert added.payload["router_interface"]["id"] == router.id
    assert added.payload["router_interface"]["port_id"] == iface["port_id"]
    assert added.payload["router_interface"]["subnet_id"] == subnet.id
    gateway = recorder.wait_for(
        lambda n: (
            n.event_type == "router.update.end"
            and n.payload["router"]["id"] == router.id
            and bool(n.payload["router"]["external_gateway_info"])
        )
    )
    assert gateway.payload["router"]["external_gateway_info"]["network_id"] == public.id
    created = recorder.wait_for(_is("floatingip.create.end", "floatingip", fip.id))
    assert created.payload["floatingip"]["router_id"] == router.id


def test_second_up_is_harmless(neutron: Endpoint) -> None:
    again = NeutronTestbed(state_dir=neutron.log.parent, database="astara_neutron_test").up()
    assert again == neutron


def test_down_leaves_no_process(tmp_path: Path) -> None:
    bed = NeutronTestbed(state_dir=tmp_path / "bed", database="astara_neutron_down")
    endpoint = bed.up()
    assert process_alive(endpoint.pid)
    bed.down()
    assert not process_alive(endpoint.pid)
    leftovers = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and process_alive(int(pid))
        and str(tmp_path).encode() in _environ(int(pid))
    ]
    assert leftovers == []
    assert bed.status() is None


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
