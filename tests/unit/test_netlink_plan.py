"""Planning of addresses, routes and sysctls from the document (pure, no kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from astara.appliance.netlink import (
    Address,
    Converged,
    LinkNotFoundError,
    Route,
    desired_addresses,
    desired_routes,
    desired_sysctls,
    diff,
    garp_targets,
    owned_address,
)
from astara.wire.document import ApplianceConfig

pytestmark = pytest.mark.unit

MGT, EXT, INT = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
LINKS = {MGT: "eth0", EXT: "eth1", INT: "eth2"}


def config(**extra: Any) -> ApplianceConfig:
    doc: dict[str, Any] = {
        "generation": 1,
        "router_id": "r1",
        "hostname": "r1",
        "interfaces": [{"mac": MGT}, {"mac": EXT}, {"mac": INT}],
        "networks": [
            {
                "id": "mgt",
                "kind": "management",
                "interface_mac": MGT,
                "addresses": ["fdca:3ba5::2/64"],
            },
            {
                "id": "ext",
                "kind": "external",
                "interface_mac": EXT,
                "addresses": ["172.24.0.2/16", "2001:db8:ff::2/64"],
                "subnets": [
                    {"id": "e4", "cidr": "172.24.0.0/16", "gateway_ip": "172.24.0.1"},
                    {"id": "e4b", "cidr": "172.25.0.0/16", "gateway_ip": "172.25.0.1"},
                    {"id": "e6", "cidr": "2001:db8:ff::/64", "gateway_ip": "2001:db8:ff::1"},
                ],
            },
            {
                "id": "int",
                "kind": "internal",
                "interface_mac": INT,
                "addresses": ["10.0.0.1/24"],
                "subnets": [{"id": "i4", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"}],
            },
        ],
    }
    doc.update(extra)
    return ApplianceConfig.model_validate(doc)


def test_router_addresses_of_every_network() -> None:
    assert desired_addresses(config(), LINKS) == {
        Address("eth0", "fdca:3ba5::2", 64),
        Address("eth1", "172.24.0.2", 16),
        Address("eth1", "2001:db8:ff::2", 64),
        Address("eth2", "10.0.0.1", 24),
    }


def test_floating_and_forwarded_ips_are_host_addresses_outside() -> None:
    doc = config(
        floating_ips=[{"floating_ip": "172.24.0.10", "fixed_ip": "10.0.0.5"}],
        port_forwards=[
            {
                "id": "pf1",
                "external_ip": "172.24.0.11",
                "protocol": "tcp",
                "external_port": {"first": 22, "last": 22},
                "internal_ip": "10.0.0.6",
                "internal_port": {"first": 22, "last": 22},
            },
            {
                "id": "pf2",
                "external_ip": "172.24.0.2",  # the router's own address: no extra /32
                "protocol": "tcp",
                "external_port": {"first": 80, "last": 80},
                "internal_ip": "10.0.0.6",
                "internal_port": {"first": 80, "last": 80},
            },
        ],
    )
    extra = desired_addresses(doc, LINKS) - desired_addresses(config(), LINKS)
    assert extra == {Address("eth1", "172.24.0.10", 32), Address("eth1", "172.24.0.11", 32)}


def test_default_routes_use_first_gateway_per_version_and_static_routes_their_link() -> None:
    doc = config(
        routes=[
            {"destination": "192.168.7.0/24", "nexthop": "10.0.0.9"},
            {"destination": "2001:db8:77::/48", "nexthop": "2001:db8:ff::9"},
        ]
    )
    assert desired_routes(doc, LINKS) == {
        Route("0.0.0.0/0", "172.24.0.1", "eth1"),
        Route("::/0", "2001:db8:ff::1", "eth1"),
        Route("192.168.7.0/24", "10.0.0.9", "eth2"),
        Route("2001:db8:77::/48", "2001:db8:ff::9", "eth1"),
    }


def test_no_external_network_means_no_default_route() -> None:
    doc = config()
    doc = doc.model_copy(update={"networks": [n for n in doc.networks if n.kind != "external"]})
    assert desired_routes(doc, LINKS) == set()


def test_diff_adds_missing_and_removes_extra_sorted() -> None:
    change = diff(
        desired={Address("eth1", "172.24.0.3", 32), Address("eth1", "172.24.0.2", 16)},
        actual=[Address("eth1", "172.24.0.2", 16), Address("eth1", "172.24.0.9", 32)],
    )
    assert change.to_add == (Address("eth1", "172.24.0.3", 32),)
    assert change.to_remove == (Address("eth1", "172.24.0.9", 32),)
    assert not diff(desired=[Address("a", "10.0.0.1", 8)], actual=[Address("a", "10.0.0.1", 8)])


def test_link_local_and_unmanaged_interfaces_are_not_ours() -> None:
    assert owned_address(Address("eth1", "172.24.0.9", 32), ["eth1"])
    assert not owned_address(Address("eth1", "fe80::1", 64), ["eth1"])
    assert not owned_address(Address("eth9", "172.24.0.9", 32), ["eth1"])


def test_sysctls_forward_and_refuse_ras_except_on_management() -> None:
    wanted = desired_sysctls(config(), LINKS)
    assert wanted["net/ipv4/ip_forward"] == "1"
    assert wanted["net/ipv6/conf/all/forwarding"] == "1"
    assert wanted["net/ipv6/conf/eth1/accept_ra"] == "0"
    assert wanted["net/ipv6/conf/eth2/accept_ra"] == "0"
    assert wanted["net/ipv4/conf/eth1/promote_secondaries"] == "1"
    assert not any("eth0" in path for path in wanted)


def test_garp_only_for_ipv4_added_outside() -> None:
    added = [
        Address("eth1", "172.24.0.10", 32),
        Address("eth1", "2001:db8:ff::2", 64),
        Address("eth2", "10.0.0.1", 24),
    ]
    assert garp_targets(added, config(), LINKS) == [Address("eth1", "172.24.0.10", 32)]


def test_missing_link_is_named() -> None:
    with pytest.raises(LinkNotFoundError, match=INT):
        desired_addresses(config(), {MGT: "eth0", EXT: "eth1"})


def test_the_last_apply_is_trusted_only_under_the_very_document_and_names() -> None:
    applied = config(floating_ips=[{"floating_ip": "172.24.0.9", "fixed_ip": "10.0.0.9"}])
    record = Converged(applied, dict(LINKS), frozenset(), frozenset())
    later = config(generation=2)
    assert record.covers(later, applied, LINKS)
    assert record.covers(None, applied, LINKS)
    # Asked to re-read, another document, other names: the kernel is dumped instead.
    assert not record.covers(later, None, LINKS)
    assert not record.covers(later, config(), LINKS)
    assert not record.covers(later, applied, {**LINKS, INT: "eth9"})
    # An interface the last document did not manage: its addresses were never read.
    fewer = applied.model_copy(update={"networks": applied.networks[:2]})
    narrow = Converged(fewer, dict(LINKS), frozenset(), frozenset())
    assert narrow.covers(fewer, fewer, LINKS)
    assert not narrow.covers(later, fewer, LINKS)


def test_address_requests_decode_as_rtnetlink_address_messages() -> None:
    # Decoded by pyroute2: the same bytes iproute2 would send.
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    from astara.appliance.netlink import RTM_DELADDR, RTM_NEWADDR, _address_request

    def decoded(data: bytes) -> Any:
        msg = ifaddrmsg(data)
        msg.decode()
        return msg

    add = decoded(_address_request("add", 7, Address("eth1", "172.24.0.9", 24), 41))
    assert (add["header"]["type"], add["header"]["sequence_number"]) == (RTM_NEWADDR, 41)
    assert (add["family"], add["prefixlen"], add["index"]) == (2, 24, 7)
    assert add.get_attr("IFA_LOCAL") == add.get_attr("IFA_ADDRESS") == "172.24.0.9"
    assert add.get_attr("IFA_BROADCAST") == "172.24.0.255"
    gone = decoded(_address_request("del", 7, Address("eth1", "2001:db8::9", 64), 42))
    assert gone["header"]["type"] == RTM_DELADDR
    assert (gone["family"], gone.get_attr("IFA_ADDRESS")) == (10, "2001:db8::9")
    assert gone.get_attr("IFA_BROADCAST") is None
