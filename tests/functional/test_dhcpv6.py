"""DHCPv6 from the appliance's dnsmasq to a real client (ISC dhclient), stateful and stateless.

tD-c1 (stateful: leases 2001:db8:41:1::10) --- tD-r [net1 | net2] --- tD-c2 (stateless)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.dnsmasq import DnsmasqSubsystem
from astara.appliance.netlink import LinksSubsystem, resolve_links
from astara.testing.netns import Namespace, Topology, inside
from astara.wire.document import ApplianceConfig

pytestmark = pytest.mark.functional

NET1_MAC, NET2_MAC = "02:0d:00:00:00:01", "02:0d:00:00:00:02"
C1_MAC, C2_MAC = "02:0d:00:00:01:01", "02:0d:00:00:02:01"


def v6_network(n: int, mode: str, mac: str, client_mac: str) -> dict[str, Any]:
    prefix = f"2001:db8:41:{n}::"
    return {
        "id": f"net{n}",
        "kind": "internal",
        "interface_mac": mac,
        "addresses": [f"{prefix}1/64"],
        "dns_domain": "v6.test",
        "subnets": [
            {
                "id": f"s{n}",
                "cidr": f"{prefix}/64",
                "gateway_ip": f"{prefix}1",
                "ipv6_ra_mode": mode,
                "ipv6_address_mode": mode,
            }
        ],
        "allocations": [
            {"port_id": f"p{n}", "mac": client_mac, "ips": [f"{prefix}{n}0"], "hostname": f"c{n}"}
        ],
    }


DOCUMENT = ApplianceConfig.model_validate(
    {
        "generation": 1,
        "router_id": "router-d",
        "hostname": "router-d",
        "interfaces": [{"mac": NET1_MAC}, {"mac": NET2_MAC}],
        "networks": [
            v6_network(1, "dhcpv6-stateful", NET1_MAC, C1_MAC),
            v6_network(2, "dhcpv6-stateless", NET2_MAC, C2_MAC),
        ],
    }
)


@dataclass
class Bed:
    topo: Topology
    c1: Namespace
    c2: Namespace


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    # dnsmasq re-reads its files after dropping root: the state dir must be traversable.
    state = Path(tempfile.mkdtemp(prefix="tD-state-"))
    state.chmod(0o755)
    with Topology("tD") as topo:
        router, c1, c2 = topo.namespace("tD-r"), topo.namespace("tD-c1"), topo.namespace("tD-c2")
        topo.veth(router, "tDr-1", c1, "tDc1", left_mac=NET1_MAC, right_mac=C1_MAC)
        topo.veth(router, "tDr-2", c2, "tDc2", left_mac=NET2_MAC, right_mac=C2_MAC)
        with inside(router.name):
            links = resolve_links([NET1_MAC, NET2_MAC])
            addresses, dhcp = LinksSubsystem(), DnsmasqSubsystem(state / "dhcp")
            for subsystem in (addresses, dhcp):
                subsystem.apply(DOCUMENT, None, links)
        try:
            yield Bed(topo, c1, c2)
        finally:
            with inside(router.name):
                for subsystem in (dhcp, addresses):
                    subsystem.apply(None, DOCUMENT, links)
                addresses.close()
    shutil.rmtree(state, ignore_errors=True)


def test_a_stateful_client_leases_its_neutron_address_and_the_routers_resolver(bed: Bed) -> None:
    given = bed.topo.dhcp6(bed.c1, "tDc1")
    assert given["ip6_address"] == "2001:db8:41:1::10"
    assert given["dhcp6_name_servers"] == "2001:db8:41:1::1"
    assert given["dhcp6_domain_search"].rstrip(".") == "v6.test"
    assert "2001:db8:41:1::10/128" in {str(a) for a in bed.c1.addresses("tDc1", 6)}


def test_a_stateless_client_gets_options_and_no_address(bed: Bed) -> None:
    given = bed.topo.dhcp6(bed.c2, "tDc2", stateless=True)
    assert given["ip6_address"] == ""
    assert given["dhcp6_name_servers"] == "2001:db8:41:2::1"
    assert bed.c2.addresses("tDc2", 6) == []
