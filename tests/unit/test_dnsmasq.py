"""dnsmasq renderers: command line, hosts file and options file (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.dnsmasq import (
    DnsmasqPaths,
    desired_instances,
    render,
    render_argv,
    render_hosts,
    render_names,
    render_opts,
    resolvers,
    tags_hosts,
)
from astara.wire.document import ApplianceConfig, Network

pytestmark = pytest.mark.unit

STATE = Path("/var/lib/astara/dhcp")
V4 = {
    "id": "v4",
    "cidr": "10.0.0.0/24",
    "gateway_ip": "10.0.0.1",
    "dns_nameservers": ["192.0.2.53", "192.0.2.54"],
    "host_routes": [{"destination": "192.168.9.0/24", "nexthop": "10.0.0.254"}],
}
STATEFUL = {
    "id": "v6a",
    "cidr": "2001:db8:1::/64",
    "gateway_ip": "2001:db8:1::1",
    "ipv6_ra_mode": "dhcpv6-stateful",
    "ipv6_address_mode": "dhcpv6-stateful",
    "dns_nameservers": ["2001:db8::53"],
}
STATELESS = {
    "id": "v6b",
    "cidr": "2001:db8:2::/64",
    "ipv6_ra_mode": "dhcpv6-stateless",
    "ipv6_address_mode": "dhcpv6-stateless",
}
SLAAC = {
    "id": "v6c",
    "cidr": "2001:db8:3::/64",
    "ipv6_ra_mode": "slaac",
    "ipv6_address_mode": "slaac",
}


def network(
    subnets: list[dict[str, Any]], allocations: list[dict[str, Any]] | None = None
) -> Network:
    return Network.model_validate(
        {
            "id": "net-1",
            "kind": "internal",
            "interface_mac": "02:00:00:00:00:03",
            "addresses": ["10.0.0.1/24", "2001:db8:1::1/64"],
            "subnets": subnets,
            "allocations": allocations or [],
        }
    )


ALLOCATIONS = [
    {
        "port_id": "p1",
        "mac": "fa:16:3e:00:00:01",
        "ips": ["10.0.0.5", "2001:db8:1::5", "2001:db8:3::5"],
        "hostname": "vm-one.example.org",
    },
    {"port_id": "p2", "mac": "fa:16:3e:00:00:02", "ips": ["2001:db8:3::6"], "hostname": "vm2"},
]


def test_argv_binds_one_interface_with_per_network_files() -> None:
    paths = DnsmasqPaths(STATE, "net-1")
    argv = render_argv(network([V4, STATEFUL, STATELESS, SLAAC]), "eth2", paths, 3600)
    assert argv[0] == "dnsmasq"
    for arg in (
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        "--bind-interfaces",
        "--interface=eth2",
        "--except-interface=lo",
        f"--pid-file={STATE}/dnsmasq-net-1.pid",
        f"--dhcp-leasefile={STATE}/dnsmasq-net-1.leases",
        "--log-facility=-",
        "--user=dnsmasq",
        f"--dhcp-hostsfile={STATE}/dnsmasq-net-1.hosts",
        f"--dhcp-optsfile={STATE}/dnsmasq-net-1.opts",
    ):
        assert arg in argv
    ranges = [a for a in argv if a.startswith("--dhcp-range=")]
    assert ranges == [
        "--dhcp-range=set:s0,10.0.0.0,static,255.255.255.0,3600s",
        "--dhcp-range=set:s1,2001:db8:1::,static,64,3600s",
        "--dhcp-range=set:s2,2001:db8:2::,static,64,3600s",
    ]


def test_hosts_lines_carry_addresses_dhcp_hands_out() -> None:
    hosts = render_hosts(network([V4, STATEFUL, SLAAC], ALLOCATIONS))
    # SLAAC addresses are not DHCP's; a host with only those gets no line; names lose the domain.
    assert hosts == "fa:16:3e:00:00:01,10.0.0.5,[2001:db8:1::5],vm-one\n"


def test_dhcp_disabled_subnet_serves_nothing() -> None:
    v4_off = {**V4, "dhcp_enabled": False}
    net = network([v4_off, STATEFUL], ALLOCATIONS)
    assert render_hosts(net) == "fa:16:3e:00:00:01,[2001:db8:1::5],vm-one\n"
    assert [a for a in render_argv(net, "eth2", DnsmasqPaths(STATE, "n")) if "range" in a] == [
        "--dhcp-range=set:s1,2001:db8:1::,static,64,86400s"
    ]
    assert render(network([v4_off, SLAAC]), "eth2", STATE) is None


def test_opts_router_dns_and_classless_routes_per_subnet() -> None:
    opts = render_opts(network([V4, STATEFUL, SLAAC])).splitlines()
    assert opts == [
        "tag:s0,option:router,10.0.0.1",
        "tag:s0,option:mtu,1500",
        # The router is the network's resolver; it forwards to the subnet's dns_nameservers.
        "tag:s0,option:dns-server,10.0.0.1",
        "tag:s0,option:classless-static-route,192.168.9.0/24,10.0.0.254,0.0.0.0/0,10.0.0.1",
        "tag:s1,option6:dns-server,[2001:db8:1::1]",
    ]


def test_gatewayless_subnet_gets_an_empty_router_option() -> None:
    bare = {"id": "v4", "cidr": "10.0.0.0/24"}
    assert render_opts(network([bare])).splitlines() == [
        "tag:s0,option:router",
        "tag:s0,option:mtu,1500",
        "tag:s0,option:dns-server,10.0.0.1",
    ]


def test_instances_only_for_internal_networks_with_dhcp() -> None:
    doc = ApplianceConfig.model_validate(
        {
            "generation": 1,
            "router_id": "r",
            "hostname": "r",
            "interfaces": [{"mac": "02:00:00:00:00:02"}, {"mac": "02:00:00:00:00:03", "mtu": 1400}],
            "networks": [
                {
                    "id": "ext",
                    "kind": "external",
                    "interface_mac": "02:00:00:00:00:02",
                    "addresses": ["172.24.0.2/16"],
                    "subnets": [{"id": "e", "cidr": "172.24.0.0/16"}],
                },
                network([V4]).model_dump(),
            ],
        }
    )
    links = {"02:00:00:00:00:02": "eth1", "02:00:00:00:00:03": "eth2"}
    found = desired_instances(doc, links, STATE)
    assert list(found) == ["net-1"]
    assert "--interface=eth2" in found["net-1"].argv
    assert "--dhcp-range=set:s0,10.0.0.0,static,255.255.255.0,86400s" in found["net-1"].argv
    # The lease time is the document's (the operator's [dhcp] lease_duration).
    short = desired_instances(doc.model_copy(update={"dhcp_lease_seconds": 600}), links, STATE)
    assert "--dhcp-range=set:s0,10.0.0.0,static,255.255.255.0,600s" in short["net-1"].argv
    # The network's MTU (its interface's) reaches the VMs as DHCP option 26.
    assert "tag:s0,option:mtu,1400" in found["net-1"].opts.splitlines()
    assert desired_instances(None, links, STATE) == {}


def test_names_answer_every_address_of_every_port_under_the_networks_domain() -> None:
    net = network([V4, STATEFUL, SLAAC], ALLOCATIONS).model_copy(
        update={"dns_domain": "tenant.example"}
    )
    assert render_names(net).splitlines() == [
        "10.0.0.5 vm-one.tenant.example vm-one",
        "2001:db8:1::5 vm-one.tenant.example vm-one",
        "2001:db8:3::5 vm-one.tenant.example vm-one",
        "2001:db8:3::6 vm2.tenant.example vm2",
    ]
    assert render_names(network([V4], ALLOCATIONS)).splitlines()[0] == "10.0.0.5 vm-one"
    # DHCPv6 clients get the domain as their search list (DHCPv4 ones from --domain).
    assert "tag:s1,option6:domain-search,tenant.example" in render_opts(net).splitlines()
    argv = render_argv(net, "eth2", DnsmasqPaths(STATE, "net-1"), servers=["192.0.2.53"])
    for arg in (
        f"--addn-hosts={STATE}/dnsmasq-net-1.names",
        "--domain=tenant.example",
        "--local=/tenant.example/",
        "--domain-needed",
        "--bogus-priv",
        "--server=192.0.2.53",
    ):
        assert arg in argv


def test_forwarding_goes_to_the_subnets_resolvers_else_the_operators_never_to_itself() -> None:
    upstream = [ipaddress.ip_address("198.51.100.53")]
    assert resolvers(network([V4, STATEFUL]), upstream) == [
        "192.0.2.53",
        "192.0.2.54",
        "2001:db8::53",
    ]
    assert resolvers(network([SLAAC]), upstream) == ["198.51.100.53"]
    assert resolvers(network([SLAAC]), []) == []
    unusable = ["127.0.0.1", "169.254.169.254", "10.0.0.1", "10.9.0.1", "ff02::1", "0.0.0.0"]
    looping = {**V4, "dns_nameservers": [*unusable, "192.0.2.53", "192.0.2.53"]}
    # 10.9.0.1: another network's router address (two networks would forward to each other).
    own = [ipaddress.ip_address("10.9.0.1")]
    assert resolvers(network([looping]), upstream, own) == ["192.0.2.53"]


def test_a_ports_extra_options_are_its_own_by_name_or_number_v4_and_v6() -> None:
    options = [
        {"name": "bootfile-name", "value": "pxelinux.0"},
        {"name": "150", "value": "10.0.0.9"},
        {"name": "ntp-server", "value": "[2001:db8::123]", "ip_version": 6},
        {"name": "70", "value": "x", "ip_version": 6},
    ]
    allocations = [{**ALLOCATIONS[0], "dhcp_options": options}, ALLOCATIONS[1]]
    net = network([V4, STATEFUL, SLAAC], allocations)
    # Only the port with options is tagged; the tag is its position, never its id.
    assert render_hosts(net) == ("fa:16:3e:00:00:01,set:port0,10.0.0.5,[2001:db8:1::5],vm-one\n")
    assert render_opts(net).splitlines()[-4:] == [
        "tag:port0,option:bootfile-name,pxelinux.0",
        "tag:port0,150,10.0.0.9",
        "tag:port0,option6:ntp-server,[2001:db8::123]",
        "tag:port0,option6:70,x",
    ]
    # dnsmasq 2.90 cannot re-read such a hosts file: a change to it restarts dnsmasq.
    assert tags_hosts(render_hosts(net))
    assert not tags_hosts(render_hosts(network([V4, STATEFUL, SLAAC], ALLOCATIONS)))
