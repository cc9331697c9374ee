"""The configuration document refuses what cannot be applied, saying where and why."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from astara.wire import document as document_module
from astara.wire.document import (
    REDACTED,
    REDACTED_READ,
    ApplianceConfig,
    DhcpOption,
    SectionDumper,
    dump_with_secrets,
    problems,
)

pytestmark = pytest.mark.unit

EXT_MAC = "fa:16:3e:00:00:01"
INT_MAC = "fa:16:3e:00:00:02"
SIGNATURE = "5e" * 32

DOC: dict[str, Any] = {
    "generation": 3,
    "router_id": "r-1",
    "hostname": "router-1",
    "interfaces": [{"mac": EXT_MAC}, {"mac": INT_MAC.upper(), "mtu": 1450}],
    "networks": [
        {
            "id": "ext",
            "kind": "external",
            "interface_mac": EXT_MAC,
            "addresses": ["172.24.4.2/24"],
            "subnets": [{"id": "s-ext", "cidr": "172.24.4.0/24", "gateway_ip": "172.24.4.1"}],
        },
        {
            "id": "net-a",
            "kind": "internal",
            "interface_mac": INT_MAC,
            "addresses": ["10.0.0.1/24"],
            "subnets": [{"id": "s-a", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"}],
            "allocations": [
                {
                    "port_id": "p1",
                    "mac": "fa:16:3e:00:01:05",
                    "ips": ["10.0.0.5"],
                    "hostname": "vm1",
                    "instance": {
                        "instance_id": "6b7f0a52-1cb3-4b8e-9a54-1c0de1a0a001",
                        "project_id": "0c4f0e0d1f2a4b3c8d9e0f1a2b3c4d5e",
                        "signature": SIGNATURE,
                    },
                }
            ],
        },
    ],
    "floating_ips": [{"floating_ip": "172.24.4.10", "fixed_ip": "10.0.0.5"}],
    "port_forwards": [
        {
            "id": "pf1",
            "external_ip": "172.24.4.11",
            "protocol": "tcp",
            "external_port": {"first": 8080, "last": 8080},
            "internal_ip": "10.0.0.5",
            "internal_port": {"first": 80, "last": 80},
        }
    ],
    "firewall": {
        "default_action": "deny",
        "rules": [
            {"action": "allow", "protocol": "tcp", "destination_ports": {"first": 22, "last": 22}}
        ],
    },
    "metadata": {"upstream_url": "http://127.0.0.1:8775"},
}


def doc(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(DOC)
    result.update(changes)
    return result


def test_a_valid_router_has_no_problems() -> None:
    config = ApplianceConfig.model_validate(DOC)
    assert problems(config) == []
    assert config.interfaces[1].mac == INT_MAC  # MACs are normalised to lower case
    assert config.network("external") is not None
    assert [n.id for n in config.internal_networks()] == ["net-a"]


def test_instance_signature_is_redacted_when_dumped() -> None:
    config = ApplianceConfig.model_validate(DOC)
    assert SIGNATURE not in config.model_dump_json()
    identity = config.networks[1].allocations[0].instance
    assert identity is not None
    assert identity.signature.get_secret_value() == SIGNATURE
    assert SIGNATURE in dump_with_secrets(config)


@pytest.mark.parametrize(
    "signature", ["5E" * 32, "5e" * 31, "5e" * 33, "zz" * 32, ""], ids=str.__len__
)
def test_instance_signature_must_be_a_hex_sha256(signature: str) -> None:
    bad = doc()
    bad["networks"][1]["allocations"][0]["instance"]["signature"] = signature
    with pytest.raises(ValidationError) as info:
        ApplianceConfig.model_validate(bad)
    (error,) = info.value.errors()
    assert error["loc"] == ("networks", 1, "allocations", 0, "instance", "signature")
    assert signature not in error["msg"] or not signature


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@127.0.0.1:8775",
        "http://127.0.0.1:8775/?x=1",
        "http://127.0.0.1:8775/#top",
        "ftp://127.0.0.1/",
    ],
)
def test_metadata_upstream_is_a_plain_base_url(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        ApplianceConfig.model_validate(doc(metadata={"upstream_url": url}))
    assert info.value.errors()[0]["loc"][:2] == ("metadata", "upstream_url")


def test_a_sender_address_names_one_port_on_one_network() -> None:
    bad = doc()
    internal = bad["networks"][1]
    twin = copy.deepcopy(internal["allocations"][0])
    twin["port_id"] = "p2"
    internal["allocations"].append(twin)
    other = copy.deepcopy(internal)
    other.update(id="net-b", interface_mac="fa:16:3e:00:00:03", allocations=[])
    other["subnets"] = [{"id": "s-b", "cidr": "10.0.0.128/25"}]
    other["addresses"] = ["10.0.0.129/25"]
    bad["networks"].append(other)
    bad["interfaces"].append({"mac": "fa:16:3e:00:00:03"})
    found = {(p.loc, p.msg) for p in problems(ApplianceConfig.model_validate(bad))}
    assert (("networks", 1, "allocations", 1, "ips", 0), "held by another allocation") in found
    assert (
        ("networks", 2, "subnets", 0, "cidr"),
        "overlaps a subnet of internal network net-a",
    ) in found


def test_field_errors_carry_their_path() -> None:
    bad = doc(generation=0, unknown=1)
    bad["interfaces"][0]["mac"] = "nope"
    with pytest.raises(ValidationError) as info:
        ApplianceConfig.model_validate(bad)
    locs = {err["loc"] for err in info.value.errors()}
    assert ("generation",) in locs
    assert ("unknown",) in locs
    assert ("interfaces", 0, "mac") in locs


def test_port_range_must_be_ordered() -> None:
    bad = doc()
    bad["port_forwards"][0]["external_port"] = {"first": 90, "last": 80}
    with pytest.raises(ValidationError) as info:
        ApplianceConfig.model_validate(bad)
    assert info.value.errors()[0]["loc"] == ("port_forwards", 0, "external_port", "last")


def test_every_cross_reference_problem_is_reported_with_its_path() -> None:
    bad = doc()
    bad["networks"][1]["interface_mac"] = "fa:16:3e:00:00:99"
    bad["networks"][1]["allocations"][0]["ips"] = ["10.9.9.9"]
    bad["floating_ips"].append({"floating_ip": "172.24.4.10", "fixed_ip": "10.7.0.1"})
    bad["port_forwards"][0]["external_ip"] = "172.24.4.10"
    bad["firewall"]["rules"].append(
        {"action": "deny", "protocol": "icmp", "source_ports": {"first": 1, "last": 1}}
    )
    bad["routes"] = [{"destination": "10.50.0.0/16", "nexthop": "192.168.77.1"}]
    found = {(p.loc, p.msg) for p in problems(ApplianceConfig.model_validate(bad))}
    assert (("networks", 1, "interface_mac"), "no interface has this MAC") in found
    assert (("networks", 1, "allocations", 0, "ips", 0), "not in a subnet of this network") in found
    assert (("floating_ips", 1, "floating_ip"), "listed twice") in found
    assert (("floating_ips", 1, "fixed_ip"), "not in a subnet of an internal network") in found
    assert (("port_forwards", 0, "external_ip"), "already a 1:1 floating IP") in found
    assert (("firewall", "rules", 1, "source_ports"), "ports need protocol tcp or udp") in found
    assert (("routes", 0, "nexthop"), "not on a connected subnet") in found


def test_firewall_groups_are_checked_against_the_interfaces_and_the_rule_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allow = {"action": "allow", "protocol": "tcp"}
    good = {"id": "g1", "interfaces": [INT_MAC, EXT_MAC], "ingress": [allow]}
    assert problems(ApplianceConfig.model_validate(doc(firewall={"groups": [good]}))) == []
    groups = [
        dict(good, interfaces=["fa:16:3e:00:00:99"]),
        dict(good, egress=[dict(allow, direction="ingress"), dict(allow, source_cidr="::/0")]),
    ]
    found = {
        (p.loc, p.msg)
        for p in problems(ApplianceConfig.model_validate(doc(firewall={"groups": groups})))
    }
    assert found == {
        (("firewall", "groups", 1, "id"), "listed twice"),
        (
            ("firewall", "groups", 0, "interfaces", 0),
            "no tenant or external interface has this MAC",
        ),
        (
            ("firewall", "groups", 1, "egress", 0, "direction"),
            "a group's rules take their direction from their list: use any",
        ),
        (("firewall", "groups", 1, "egress", 1, "source_cidr"), "not an IPv4 network"),
    }
    # Rules are counted over the router-wide list and every group's lists together.
    monkeypatch.setattr(document_module, "MAX_FIREWALL_RULES", 3)
    crowded = {"rules": [allow], "groups": [dict(good, egress=[allow, allow])]}
    found = {
        (p.loc, p.msg) for p in problems(ApplianceConfig.model_validate(doc(firewall=crowded)))
    }
    assert found == {(("firewall",), "4 rules in all; at most 3")}
    with pytest.raises(ValidationError, match=r"groups\.0\.id"):
        ApplianceConfig.model_validate(doc(firewall={"groups": [dict(good, id="a:b")]}))


def test_floating_ips_need_an_external_network() -> None:
    bad = doc()
    del bad["networks"][0]
    found = [p.loc for p in problems(ApplianceConfig.model_validate(bad))]
    assert ("networks",) in found


def test_overlapping_port_forwards_are_refused() -> None:
    bad = doc()
    second = copy.deepcopy(bad["port_forwards"][0])
    second["id"] = "pf2"
    second["external_port"] = {"first": 8000, "last": 8100}
    second["internal_port"] = {"first": 8000, "last": 8100}
    bad["port_forwards"].append(second)
    found = [p.loc for p in problems(ApplianceConfig.model_validate(bad))]
    assert ("port_forwards", 1, "external_port") in found


def test_a_document_read_back_with_its_secrets_masked_validates_only_as_a_read() -> None:
    """GET /v1/config answers with secrets masked: the orchestrator can still read it, and a
    masked secret is never accepted as a document to apply."""
    masked = ApplianceConfig.model_validate(DOC).model_dump_json()
    assert REDACTED in masked
    read = ApplianceConfig.model_validate_json(masked, context=REDACTED_READ)
    assert read.generation == DOC["generation"]
    with pytest.raises(ValidationError):
        ApplianceConfig.model_validate_json(masked)


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ({"name": "no-such-option", "value": "x"}, "not a DHCPv4 option name dnsmasq knows"),
        ({"name": "ntp-server", "value": "x", "ip_version": 6}, None),
        ({"name": "bootfile-name", "value": "x", "ip_version": 6}, "not a DHCPv6 option name"),
        ({"name": "255", "value": "x"}, "option numbers are 1 to 254 for IPv4"),
        ({"name": "0", "value": "x"}, "option numbers are 1 to 254"),
        ({"name": "300", "value": "x", "ip_version": 6}, None),
        # A line break would make the rest of the value an option line for another port.
        ({"name": "router", "value": "10.0.0.1\ntag:port1,option:router,6.6.6.6"}, "one line"),
        ({"name": "tag:port1,option:router", "value": "x"}, "dnsmasq knows"),
    ],
)
def test_extra_dhcp_options_are_names_dnsmasq_knows_or_numbers_on_one_line(
    option: dict[str, Any], reason: str | None
) -> None:
    if reason is None:
        assert DhcpOption.model_validate(option).name == option["name"]
        return
    with pytest.raises(ValidationError, match=re.escape(reason)):
        DhcpOption.model_validate(option)


def test_the_section_dumper_writes_dump_with_secrets_text_and_redumps_only_new_sections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dumped: list[str] = []
    real = document_module._section_adapter

    def counting(name: str) -> Any:
        dumped.append(name)
        return real(name)

    monkeypatch.setattr(document_module, "_section_adapter", counting)
    first = ApplianceConfig.model_validate(DOC)
    dumper = SectionDumper()
    assert dumper.dump(first) == dump_with_secrets(first)  # secrets in clear, same bytes
    assert SIGNATURE in dumper.dump(first)
    assert len(dumped) == len(ApplianceConfig.model_fields)
    dumped.clear()
    second = first.model_copy(update={"generation": 2})  # every other section shared
    assert dumper.dump(second) == dump_with_secrets(second)
    assert dumped == ["generation"]
