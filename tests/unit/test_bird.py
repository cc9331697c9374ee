"""bird.conf rendering for the document's bgp section, and the checks on that section (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from astara.appliance.bird import render_conf, router_id
from astara.appliance.nftables import render_ruleset
from astara.wire.document import ApplianceConfig, problems

pytestmark = pytest.mark.unit

MGMT, EXT, INT = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
LINKS = {MGMT: "eth0", EXT: "eth1", INT: "eth2"}
BGP = {
    "local_as": 64512,
    "peers": [
        {"address": "172.24.4.1", "remote_as": 65000},
        {"address": "2001:db8:ff::1", "remote_as": 65000},
    ],
    "prefixes": ["10.0.0.0/24", "2001:db8:1::/64", "172.24.4.9/32"],
}


def document(**changes: Any) -> ApplianceConfig:
    doc: dict[str, Any] = {
        "generation": 1,
        "router_id": "r1",
        "hostname": "r1",
        "interfaces": [{"mac": MGMT}, {"mac": EXT}, {"mac": INT}],
        "networks": [
            {"id": "m", "kind": "management", "interface_mac": MGMT, "addresses": ["fdca::5/64"]},
            {
                "id": "e",
                "kind": "external",
                "interface_mac": EXT,
                "addresses": ["172.24.4.2/24", "2001:db8:ff::2/64"],
                "subnets": [
                    {"id": "e4", "cidr": "172.24.4.0/24"},
                    {"id": "e6", "cidr": "2001:db8:ff::/64"},
                ],
            },
            {
                "id": "i",
                "kind": "internal",
                "interface_mac": INT,
                "addresses": ["10.0.0.1/24", "2001:db8:1::1/64"],
                "subnets": [
                    {"id": "i4", "cidr": "10.0.0.0/24"},
                    {"id": "i6", "cidr": "2001:db8:1::/64"},
                ],
            },
        ],
        "bgp": BGP,
    }
    doc.update(changes)
    return ApplianceConfig.model_validate(doc)


def test_each_peer_hears_the_prefixes_of_its_family_and_nothing_is_imported() -> None:
    doc = document()
    conf = render_conf(doc, doc.bgp)  # type: ignore[arg-type]
    assert "router id 172.24.4.2;" in conf
    assert "protocol static announced4 {\n\tipv4;\n\troute 10.0.0.0/24 unreachable;\n" in conf
    assert "\troute 172.24.4.9/32 unreachable;\n" in conf
    assert "protocol static announced6 {\n\tipv6;\n\troute 2001:db8:1::/64 unreachable;\n}" in conf
    peer0 = conf[conf.index("protocol bgp peer0") :].split("\n}\n")[0]
    assert "neighbor 172.24.4.1 as 65000;" in peer0 and "local as 64512;" in peer0
    assert 'ipv4 {\n\t\timport none;\n\t\texport where proto = "announced4";' in peer0
    assert "next hop self;" in peer0
    peer1 = conf[conf.index("protocol bgp peer1") :]
    assert 'ipv6 {\n\t\timport none;\n\t\texport where proto = "announced6";' in peer1
    # No kernel protocol: bird never writes the appliance's routing tables.
    assert "protocol kernel" not in conf


def test_an_ipv6_only_router_gets_a_stable_ipv4_router_id() -> None:
    doc = document()
    external = doc.networks[1].model_copy(
        update={"addresses": [a for a in doc.networks[1].addresses if a.version == 6]}
    )
    v6_only = doc.model_copy(update={"networks": [doc.networks[0], external, doc.networks[2]]})
    assert router_id(v6_only) == router_id(v6_only)
    assert router_id(v6_only) != "172.24.4.2"
    assert router_id(v6_only.model_copy(update={"router_id": "r2"})) != router_id(v6_only)


def test_bgp_sessions_are_let_in_from_the_peers_only_on_the_external_interface() -> None:
    ruleset = render_ruleset(document(), LINKS)
    assert (
        'iifname "eth1" ip saddr { 172.24.4.1 } tcp dport 179 counter accept comment "bgp"'
        in ruleset
    )
    assert 'iifname "eth1" ip6 saddr { 2001:db8:ff::1 } tcp dport 179' in ruleset
    assert "dport 179" not in render_ruleset(document(bgp=None), LINKS)


def test_peers_off_the_external_network_and_management_prefixes_are_refused() -> None:
    bgp = {
        **BGP,
        "peers": [{"address": "192.0.2.1", "remote_as": 65000}],
        "prefixes": ["fdca::/48"],
    }
    found = {(p.loc, p.msg) for p in problems(document(bgp=bgp))}
    assert found == {
        (("bgp", "peers", 0, "address"), "not in a subnet of the external network"),
        (("bgp", "prefixes", 0), "overlaps the management network fdca::/64"),
    }
    assert problems(document()) == []
