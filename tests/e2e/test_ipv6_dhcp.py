"""IPv6 and per-port DHCP end to end: subnets and ports made through the real Neutron API reach
real clients in workload namespaces: DHCPv6 leases and options (ISC ``dhclient -6``), router
advertisements (``rdisc6``, and the kernel's own SLAAC and MTU), a port's ``extra_dhcp_opts``
(udhcpc).

Each test plugs a network of its own into the module's one router, so they run in any order.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest

from astara.testing.chaos import eventually, plugin_cloud
from astara.testing.cloud import CloudInABox, Workload

pytestmark = pytest.mark.e2e

PREFIX = "atv"
STATE = Path("/var/lib/astara/e2e-ipv6-dhcp")
FIRST = 90  # s: the first answer on a new network may wait for the appliance to boot


@dataclass
class World:
    cloud: CloudInABox
    sdk: openstack.connection.Connection
    project: str
    router: Any


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with plugin_cloud(STATE, "astara_neutron_ipv6", PREFIX) as (cloud, sdk):
        project = "v6" + str(int(time.time()))
        router = sdk.network.create_router(name="v6", project_id=project)
        yield World(cloud, sdk, project, router)


def routed_network(
    world: World, name: str, cidr: str, network: dict[str, Any] | None = None, **subnet: Any
) -> tuple[Any, Any]:
    """A network (``network``: its attributes) with one subnet on the world's router."""
    sdk, project = world.sdk, world.project
    net = sdk.network.create_network(name=name, project_id=project, **(network or {}))
    sub = sdk.network.create_subnet(
        network_id=net.id, cidr=cidr, ip_version=ipaddress.ip_network(cidr).version,
        project_id=project, name=name, **subnet,
    )  # fmt: skip
    sdk.network.add_interface_to_router(world.router, subnet=sub.id)
    return net, sub


def vm(world: World, net: Any, name: str, **port: Any) -> tuple[Workload, Any]:
    """A Neutron port on ``net`` and the workload holding it."""
    made = world.sdk.network.create_port(
        network_id=net.id, project_id=world.project, name=name, **port
    )
    return world.cloud.workload(net.id, made.mac_address), made


def addresses6(workload: Workload) -> set[str]:
    return {str(a) for a in workload.namespace.addresses(workload.ifname, 6)}


def test_a_stateful_dhcpv6_client_leases_the_address_neutron_allocated(world: World) -> None:
    mode = "dhcpv6-stateful"
    net, sub = routed_network(
        world, "stateful", "2001:db8:61::/64", ipv6_ra_mode=mode, ipv6_address_mode=mode
    )
    workload, port = vm(world, net, "vm-stateful")
    # The router advertises the network as managed: its addresses come from DHCPv6 only.
    advert = eventually(
        lambda: workload.namespace.router_advertisement(workload.ifname), FIRST, "an RA"
    )
    assert re.search(r"^Stateful address conf\.\s*:\s*Yes", advert, re.M), advert
    given = eventually(lambda: world.cloud.dhcp6(workload, timeout=5), 60, "a DHCPv6 lease")
    (allocated,) = [ip["ip_address"] for ip in port.fixed_ips]
    assert given["ip6_address"] == allocated
    assert given["dhcp6_name_servers"] == sub.gateway_ip  # the router resolves for the network
    assert addresses6(workload) == {f"{allocated}/128"}  # and no SLAAC address beside it


def test_a_stateless_dhcpv6_client_gets_options_and_its_slaac_address(world: World) -> None:
    mode = "dhcpv6-stateless"
    net, sub = routed_network(
        world, "stateless", "2001:db8:62::/64", network={"dns_domain": "v6.example."},
        ipv6_ra_mode=mode, ipv6_address_mode=mode,
    )  # fmt: skip
    workload, port = vm(world, net, "vm-stateless")
    # Neutron's address for the port is the EUI-64 one the workload's kernel makes from the RA.
    (slaac,) = [ip["ip_address"] for ip in port.fixed_ips]
    eventually(lambda: f"{slaac}/64" in addresses6(workload), FIRST, "the SLAAC address")
    given = eventually(
        lambda: world.cloud.dhcp6(workload, stateless=True, timeout=5), 60, "DHCPv6 options"
    )
    assert given["ip6_address"] == ""
    assert given["dhcp6_name_servers"] == sub.gateway_ip
    assert given["dhcp6_domain_search"].rstrip(".") == "v6.example"
    assert addresses6(workload) == {f"{slaac}/64"}


def test_router_advertisements_carry_a_1400_byte_networks_mtu(world: World) -> None:
    net, _ = routed_network(
        world, "narrow", "2001:db8:63::/64", network={"mtu": 1400},
        ipv6_ra_mode="slaac", ipv6_address_mode="slaac",
    )  # fmt: skip
    assert world.sdk.network.get_network(net.id).mtu == 1400
    workload, port = vm(world, net, "vm-narrow")
    advert = eventually(
        lambda: workload.namespace.router_advertisement(workload.ifname), FIRST, "an RA"
    )
    assert re.search(r"^\s*MTU\s*:\s*1400 bytes", advert, re.M), advert

    # The workload's kernel takes both: IPv6 on its NIC sends 1400 bytes at most (the link
    # stays at 1500), and its SLAAC address is the one Neutron gave the port.
    def ipv6_mtu() -> str:
        key = f"net.ipv6.conf.{workload.ifname}.mtu"
        return workload.namespace.run(["sysctl", "-n", key]).stdout.strip()

    eventually(lambda: ipv6_mtu() == "1400", 10, "the RA's MTU on the workload's NIC")
    (slaac,) = [ip["ip_address"] for ip in port.fixed_ips]
    eventually(lambda: f"{slaac}/64" in addresses6(workload), 10, "the SLAAC address")


def test_a_ports_extra_dhcp_option_reaches_that_port_only(world: World) -> None:
    ntp, later = "10.64.0.123", "10.64.0.124"
    net, _ = routed_network(world, "options", "10.64.0.0/24")
    option = {"opt_name": "ntp-server", "opt_value": ntp, "ip_version": 4}
    with_option, port_a = vm(world, net, "vm-ntp", extra_dhcp_opts=[option])
    without, port_b = vm(world, net, "vm-plain")

    def lease(workload: Workload) -> dict[str, str]:
        # Both clients ask for NTP servers (option 42): the server decides who gets them.
        world.cloud.dhcp(workload, timeout=3, request=["ntpsrv"])
        return world.cloud.lease(workload)

    given = eventually(lambda: lease(with_option), FIRST, "a lease for vm-ntp")
    assert given["ip"] == port_a.fixed_ips[0]["ip_address"]
    assert given["ntpsrv"] == ntp
    given = eventually(lambda: lease(without), 30, "a lease for vm-plain")
    assert given["ip"] == port_b.fixed_ips[0]["ip_address"]
    assert "ntpsrv" not in given

    # An option set on a port later reaches it with its next lease.
    changed = {**option, "opt_value": later}
    world.sdk.network.update_port(port_b, extra_dhcp_opts=[changed])
    eventually(lambda: lease(without).get("ntpsrv") == later, 30, "vm-plain's new option")
    assert lease(with_option)["ntpsrv"] == ntp
