"""Real guests on the OpenStack bed (the busybox workload image): packets between two servers
on a tenant network, a NIC detached from a running guest, and the orchestrator host reaching a
server over the management network through its local port.

Guests configure the addresses Neutron allocated from their user data (on the config drive):
there is no DHCP on these networks, Astara is the DHCP service."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator

import openstack
import pytest

from astara.orchestrator.local_port import (
    LocalPort,
    ManagementSettings,
    OvsInterfaceDriver,
    ensure_local_port,
    remove_local_port,
)
from astara.testing.netns import wait_for
from astara.testing.openstack_bed.bed import OpenStackBed
from astara.testing.openstack_bed.probes import boot, ovs_port, tap_name
from tests.nova.conftest import TenantNet

pytestmark = pytest.mark.nova


def _user_data(commands: str) -> str:
    return "#!/bin/sh\n" + commands


def _console(conn: openstack.connection.Connection, server: object) -> str:
    output: str = conn.compute.get_server_console_output(server)["output"]
    return output


def _fixed_ip(port: openstack.network.v2.port.Port) -> str:
    return str(port.fixed_ips[0]["ip_address"])


@pytest.fixture
def cleanup(
    demo: openstack.connection.Connection,
) -> Iterator[list[tuple[openstack.connection.Connection, object]]]:
    servers: list[tuple[openstack.connection.Connection, object]] = []
    yield servers
    for conn, server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for conn, server in servers:
        conn.compute.wait_for_delete(server, interval=0.5, wait=120)


def test_two_servers_on_a_tenant_network_ping_each_other_and_a_nic_detaches(
    admin: openstack.connection.Connection,
    demo: openstack.connection.Connection,
    workload_image: str,
    tenant_net: TenantNet,
    cleanup: list[tuple[openstack.connection.Connection, object]],
) -> None:
    prefix = tenant_net.cidr.prefixlen
    a_port = demo.network.create_port(network_id=tenant_net.network_id)
    b_port = demo.network.create_port(network_id=tenant_net.network_id)
    spare = demo.network.create_port(network_id=tenant_net.network_id)
    a_ip, b_ip = _fixed_ip(a_port), _fixed_ip(b_port)
    setup = "ip addr add {ip}/{prefix} dev eth0\n"
    a = boot(
        demo,
        "wl-a",
        workload_image,
        "astara.tiny",
        [a_port.id],
        config_drive=True,
        user_data=_b64(_user_data(setup.format(ip=a_ip, prefix=prefix))),
    )
    cleanup.append((demo, a))
    ping = (
        setup.format(ip=b_ip, prefix=prefix)
        + f"for i in $(seq 1 90); do ping -c 1 -W 1 {a_ip} >/dev/null && "
        + 'echo "PING-A-OK" && exit 0; sleep 1; done; echo "PING-A-FAILED"\n'
    )
    b = boot(
        demo,
        "wl-b",
        workload_image,
        "astara.tiny",
        [b_port.id],
        config_drive=True,
        user_data=_b64(_user_data(ping)),
    )
    cleanup.append((demo, b))
    said = wait_for(
        lambda: next((w for w in ("PING-A-OK", "PING-A-FAILED") if w in _console(demo, b)), ""),
        300,
        "server B to report its ping of server A",
        interval=2,
    )
    assert said == "PING-A-OK", _console(demo, b)[-3000:]

    # A running Linux guest answers the hot-unplug, so the detach completes.
    demo.compute.create_server_interface(a, port_id=spare.id)
    wait_for(
        lambda: admin.network.get_port(spare.id).status == "ACTIVE",
        120,
        "the attached port ACTIVE",
        interval=0.5,
    )
    assert ovs_port(tap_name(spare.id)) is not None
    demo.compute.delete_server_interface(spare.id, server=a)
    wait_for(
        lambda: not admin.network.get_port(spare.id).device_id,
        180,
        "the detach to finish",
        interval=1,
    )
    wait_for(lambda: ovs_port(tap_name(spare.id)) is None, 30, "the detached tap gone")
    assert ovs_port(tap_name(a_port.id)) is not None


@pytest.fixture
def local(
    openstack_bed: OpenStackBed, service: openstack.connection.Connection
) -> Iterator[tuple[LocalPort, ManagementSettings]]:
    info = openstack_bed.info()
    assert info is not None
    settings = ManagementSettings(
        network_id=str(info.management["network_id"]),
        subnet_id=info.management["subnet_id"],
        host=info.host,
        integration_bridge="br-int",
        interface_name="astara-mgmt",
        port_active_timeout=60,
    )
    driver = OvsInterfaceDriver()
    yield ensure_local_port(service.network, driver, settings), settings
    remove_local_port(service.network, driver, settings)


def test_the_host_pings_a_server_over_the_management_network(
    service: openstack.connection.Connection,
    workload_image: str,
    local: tuple[LocalPort, ManagementSettings],
    cleanup: list[tuple[openstack.connection.Connection, object]],
) -> None:
    host_port, settings = local
    vm_port = service.network.create_port(network_id=settings.network_id)
    address = _fixed_ip(vm_port)
    server = boot(
        service,
        "wl-mgmt",
        workload_image,
        "astara.tiny",
        [vm_port.id],
        config_drive=True,
        user_data=_b64(_user_data(f"ip -6 addr add {address}/64 dev eth0\n")),
    )
    cleanup.append((service, server))
    wait_for(
        lambda: "user-data exit" in _console(service, server),
        300,
        "the management server to run its user data",
        interval=2,
    )
    # The guest's address is usable once its duplicate address detection is over.
    wait_for(
        lambda: (
            subprocess.run(
                ["ping", "-6", "-c", "1", "-W", "1", "-I", host_port.name, address],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ),
        30,
        f"the server's management address {address} to answer the host",
        interval=1,
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
