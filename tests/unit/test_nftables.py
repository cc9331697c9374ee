"""The nftables renderers and the applier's choice between a full replace and a delta."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astara.appliance import nftables
from astara.appliance.conntrack import ConntrackSubsystem, Cut, stale_translations
from astara.appliance.nft_runner import RuleCounter
from astara.appliance.nftables import (
    FILTER_TABLE,
    NAT_TABLE,
    TABLES,
    NftablesSubsystem,
    firewall_key,
    parse_counters,
    render_delta,
    render_removal,
    render_ruleset,
)
from astara.appliance.subsystem import ApplyStepError
from astara.wire.document import (
    ApplianceConfig,
    Firewall,
    FirewallGroup,
    FirewallRule,
    FloatingIP,
)

pytestmark = pytest.mark.unit

MGMT, EXT, INT1, INT2 = (f"02:00:00:00:00:0{n}" for n in range(1, 5))
LINKS = {MGMT: "eth0", EXT: "eth1", INT1: "eth2", INT2: "eth3"}


def document(**changes: Any) -> ApplianceConfig:
    doc: dict[str, Any] = {
        "generation": 1,
        "router_id": "r1",
        "hostname": "r1",
        "interfaces": [{"mac": mac} for mac in (MGMT, EXT, INT1, INT2)],
        "networks": [
            {
                "id": "m",
                "kind": "management",
                "interface_mac": MGMT,
                "addresses": ["fdca:3ba5:a17a:acda::2/64"],
            },
            {
                "id": "e",
                "kind": "external",
                "interface_mac": EXT,
                "addresses": ["172.24.0.1/24"],
                "subnets": [{"id": "es", "cidr": "172.24.0.0/24"}],
            },
            {
                "id": "i1",
                "kind": "internal",
                "interface_mac": INT1,
                "addresses": ["10.0.0.1/24", "2001:db8::1/64"],
                "subnets": [
                    {"id": "s1", "cidr": "10.0.0.0/24"},
                    {"id": "s16", "cidr": "2001:db8::/64"},
                ],
            },
            {
                "id": "i2",
                "kind": "internal",
                "interface_mac": INT2,
                "addresses": ["10.1.0.1/24"],
                "subnets": [{"id": "s2", "cidr": "10.1.0.0/24"}],
            },
        ],
        "metadata": {"upstream_url": "http://127.0.0.1:8775"},
    }
    doc.update(changes)
    return ApplianceConfig.model_validate(doc)


def fip(floating: str, fixed: str) -> dict[str, str]:
    return {"floating_ip": floating, "fixed_ip": fixed}


def rule(rule_id: str, action: str, **match: Any) -> dict[str, Any]:
    return {"id": rule_id, "action": action, **match}


def chain(text: str, name: str) -> list[str]:
    """The rule lines of one chain of a rendered script."""
    body = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", text, re.S)
    assert body is not None, name
    lines = [line.strip() for line in body.group(1).splitlines()]
    return [line for line in lines if not line.startswith("type ")]


def sets(text: str) -> dict[str, list[str]]:
    """Set name -> element comments, in a rendered script's filter table."""
    firewall = text.split("table ip astara_nat")[0]
    found = re.findall(r"\tset (\w+) \{\n(.*?)\n\t\}", firewall, re.S)
    return {name: re.findall(r'comment "([^"]+)"', body) for name, body in found}


def positions(text: str) -> dict[str, int]:
    """Firewall rule comment -> index of the forward-chain rule that evaluates it."""
    members = sets(text)
    where: dict[str, int] = {}
    for index, line in enumerate(chain(text, "forward")):
        comment = re.search(r'comment "([^"]+)"$', line)
        if comment is None:
            continue
        text = comment.group(1)
        for name in members.get(text.removeprefix("set "), [text]):
            assert name not in where, f"{name} evaluated twice"
            where[name] = index
    return where


def test_replaces_only_its_own_tables_in_one_script() -> None:
    text = render_ruleset(document(), LINKS)
    assert "flush ruleset" not in text
    for table in ("inet astara_filter", "ip astara_nat"):
        declare, delete, body = (f"table {table}\n", f"delete table {table}\n", f"table {table} {{")
        assert text.index(declare) < text.index(delete) < text.index(body)


def test_input_chain_opens_only_the_services_of_each_interface() -> None:
    rules = chain(render_ruleset(document(), LINKS), "input")
    assert rules[:2] == ['iifname "lo" accept', "ct state established,related accept"]
    assert 'iifname "eth0" tcp dport 5000 counter accept comment "api"' in rules
    services = [r for r in rules if "services" in r]
    assert services == [
        'iifname { "eth2", "eth3" } udp dport { 53, 67, 547 } counter accept '
        'comment "services-udp"',
        'iifname { "eth2", "eth3" } tcp dport { 53, 9697 } counter accept comment "services-tcp"',
    ]
    assert any("nd-neighbor-solicit" in r and "nd-router-advert" in r for r in rules)
    assert not any('"eth1"' in r for r in rules)
    assert "policy drop" in render_ruleset(document(), LINKS).split("chain input")[1].split("\n")[1]


def test_rules_of_one_action_fold_into_sets_without_crossing_other_actions() -> None:
    rules = [
        rule("d1", "deny", source_cidr="10.0.0.0/24"),
        rule("d2", "deny", source_cidr="10.0.1.0/24"),
        rule("a1", "allow", protocol="tcp", destination_ports={"first": 22, "last": 22}),
        rule("d3", "deny", source_cidr="10.0.2.0/24"),
        rule("d4", "deny", source_cidr="10.0.3.0/24"),
    ]
    text = render_ruleset(document(firewall={"rules": rules}), LINKS)
    where = positions(text)
    assert where["d1"] == where["d2"] < where["a1"] < where["d3"] == where["d4"]
    assert list(sets(text).values()) == [["d1", "d2"], ["d3", "d4"]]
    assert 'meta nfproto ipv4 tcp dport 22 counter accept comment "a1"' in chain(text, "forward")


def test_rules_without_id_are_named_by_position() -> None:
    rules = [{"action": "deny", "source_cidr": "10.9.0.0/16"}, rule("x", "allow")]
    forward = chain(render_ruleset(document(firewall={"rules": rules}), LINKS), "forward")
    assert 'ip saddr 10.9.0.0/16 counter drop comment "rule #0"' in forward
    assert 'meta nfproto ipv4 counter accept comment "x"' in forward


def test_overlapping_values_go_to_separate_sets() -> None:
    rules = [
        rule("host", "deny", source_cidr="10.0.0.5/32", destination_cidr="8.8.8.8/32"),
        rule("net", "deny", source_cidr="10.0.0.0/24", destination_cidr="8.8.8.0/24"),
        rule("other", "deny", source_cidr="10.0.9.0/24", destination_cidr="8.8.8.0/24"),
        rule("same", "deny", source_cidr="10.0.0.5/32", destination_cidr="8.8.8.8/32"),
    ]
    text = render_ruleset(document(firewall={"rules": rules}), LINKS)
    assert {"host", "net", "other", "same"} <= set(positions(text))
    for members in sets(text).values():
        assert not {"host", "net"} <= set(members)
        assert not {"host", "same"} <= set(members)


def test_reject_resets_tcp_and_v6_icmp_means_icmpv6() -> None:
    rules = [
        rule("rj", "reject", direction="ingress", protocol="tcp"),
        rule("v6", "allow", ip_version=6, protocol="icmp"),
        rule("out", "allow", direction="egress", source_cidr="2001:db8::/64", ip_version=6),
    ]
    text = render_ruleset(document(firewall={"rules": rules, "default_action": "deny"}), LINKS)
    forward = chain(text, "forward")
    assert 'iifname "eth1" meta nfproto ipv4 meta l4proto tcp counter goto reject_packet' in (
        "\n".join(forward)
    )
    assert 'meta nfproto ipv6 meta l4proto ipv6-icmp counter accept comment "v6"' in forward
    assert 'oifname "eth1" ip6 saddr 2001:db8::/64 counter accept comment "out"' in forward
    assert chain(text, "reject_packet") == [
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx port-unreachable",
    ]
    assert forward[-1] == 'counter drop comment "default action"'
    assert "policy drop" in text.split("chain forward")[1].split("\n")[1]


def test_floating_ips_dnat_from_outside_and_inside_and_snat_on_the_way_out() -> None:
    text = render_ruleset(document(floating_ips=[fip("172.24.0.10", "10.0.0.5")]), LINKS)
    assert "elements = { 172.24.0.10 : 10.0.0.5 }" in text
    assert "elements = { 10.0.0.5 : 172.24.0.10 }" in text
    pre = chain(text, "prerouting")
    assert any(
        r.startswith('iifname { "eth1", "eth2", "eth3" } ip daddr @fip_dnat_keys')
        and "map @fip_dnat " in r
        for r in pre
    )
    post = chain(text, "postrouting")
    names = [re.search(r'comment "([^"]+)"', r).group(1) for r in post]  # type: ignore[union-attr]
    # Floating-IP SNAT is tried before the router-wide SNAT.
    assert names == ["fip-snat", "snat", "hairpin-fip", "hairpin"]
    assert 'oifname "eth1" ip saddr { 10.0.0.0/24, 10.1.0.0/24 }' in post[1]
    assert post[1].endswith('snat ip to 172.24.0.1 comment "snat"')
    assert "masquerade" not in text
    hairpin = 'iifname { "eth2", "eth3" } oifname { "eth2", "eth3" } ct status dnat'
    assert post[2].startswith(hairpin) and post[3].startswith(hairpin)


def test_snat_disabled_keeps_floating_ip_snat() -> None:
    post = chain(render_ruleset(document(snat_enabled=False), LINKS), "postrouting")
    assert not any('"snat"' in r for r in post)
    assert any('"fip-snat"' in r for r in post)


def test_port_forwards_become_map_elements() -> None:
    forwards = [
        {
            "id": "one",
            "external_ip": "172.24.0.20",
            "protocol": "tcp",
            "external_port": {"first": 2222, "last": 2222},
            "internal_ip": "10.0.0.6",
            "internal_port": {"first": 22, "last": 22},
        },
        {
            "id": "same",
            "external_ip": "172.24.0.20",
            "protocol": "udp",
            "external_port": {"first": 5000, "last": 5010},
            "internal_ip": "10.0.0.7",
            "internal_port": {"first": 5000, "last": 5010},
        },
        {
            "id": "shifted",
            "external_ip": "172.24.0.21",
            "protocol": "udp",
            "external_port": {"first": 3000, "last": 3001},
            "internal_ip": "10.0.0.8",
            "internal_port": {"first": 4000, "last": 4001},
        },
    ]
    text = render_ruleset(document(port_forwards=forwards), LINKS)
    assert "172.24.0.20 . 2222 : 10.0.0.6 . 22" in text
    assert "172.24.0.20 . 5000-5010 : 10.0.0.7" in text
    assert "172.24.0.21 . 3000 : 10.0.0.8 . 4000" in text
    assert "172.24.0.21 . 3001 : 10.0.0.8 . 4001" in text


def test_metadata_is_redirected_to_the_local_proxy() -> None:
    pre = chain(render_ruleset(document(), LINKS), "prerouting")
    assert pre[0] == (
        'iifname { "eth2", "eth3" } ip daddr 169.254.169.254 tcp dport 80 counter '
        'redirect to :9697 comment "metadata"'
    )


@pytest.mark.security
def test_metadata_from_a_source_that_does_not_route_back_where_it_came_from_is_dropped() -> None:
    rules = chain(render_ruleset(document(), LINKS), "input")
    spoofed = rules.index(
        'iifname { "eth2", "eth3" } tcp dport 9697 fib saddr . iif oif missing counter drop '
        'comment "metadata-spoofed"'
    )
    assert spoofed < next(i for i, rule in enumerate(rules) if '"services-tcp"' in rule)


def test_unknown_mac_is_an_error() -> None:
    with pytest.raises(ValueError, match="02:00:00:00:00:04"):
        render_ruleset(document(), {MGMT: "eth0", EXT: "eth1", INT1: "eth2"})


def test_delta_is_element_updates_for_nat_only_changes() -> None:
    before = document(floating_ips=[fip("172.24.0.10", "10.0.0.5"), fip("172.24.0.11", "10.0.0.6")])
    after = document(
        generation=2,
        floating_ips=[fip("172.24.0.10", "10.0.0.7"), fip("172.24.0.12", "10.0.0.8")],
    )
    delta = render_delta(before, after, LINKS)
    assert delta is not None
    lines = delta.splitlines()
    assert lines == [
        "delete element ip astara_nat fip_dnat { 172.24.0.10, 172.24.0.11 }",
        "delete element ip astara_nat fip_dnat_keys { 172.24.0.10, 172.24.0.11 }",
        "delete element ip astara_nat fip_snat { 10.0.0.5, 10.0.0.6 }",
        "delete element ip astara_nat fip_snat_keys { 10.0.0.5, 10.0.0.6 }",
        "add element ip astara_nat fip_dnat { 172.24.0.10 : 10.0.0.7, 172.24.0.12 : 10.0.0.8 }",
        "add element ip astara_nat fip_dnat_keys { 172.24.0.10, 172.24.0.12 }",
        "add element ip astara_nat fip_snat { 10.0.0.7 : 172.24.0.10, 10.0.0.8 : 172.24.0.12 }",
        "add element ip astara_nat fip_snat_keys { 10.0.0.7, 10.0.0.8 }",
    ]
    assert render_delta(after, after, LINKS) == ""


def test_delta_is_none_when_anything_else_changes() -> None:
    before = document()
    assert render_delta(before, document(snat_enabled=False), LINKS) is None
    deny = {"rules": [rule("x", "deny", source_cidr="10.9.0.0/16")]}
    assert render_delta(before, document(firewall=deny), LINKS) is None


def test_changes_the_ruleset_does_not_depend_on_still_allow_a_delta() -> None:
    before = document()
    after = document(
        hostname="other", routes=[{"destination": "10.9.0.0/16", "nexthop": "10.0.0.9"}]
    )
    assert render_delta(before, after, LINKS) == ""
    moved = before.model_dump(mode="json")
    moved["networks"][1]["addresses"] = ["172.24.0.2/24"]
    assert render_delta(before, ApplianceConfig.model_validate(moved), LINKS) is None


def test_removal_deletes_both_tables_even_when_absent() -> None:
    assert render_removal() == (
        "table inet astara_filter\ndelete table inet astara_filter\n"
        "table ip astara_nat\ndelete table ip astara_nat\n"
    )


def test_counters_are_read_from_rules_and_set_elements() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {
                "rule": {
                    "family": "inet",
                    "table": "astara_filter",
                    "chain": "forward",
                    "comment": "r1",
                    "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": None}],
                }
            },
            {
                "rule": {
                    "family": "inet",
                    "table": "someone_else",
                    "chain": "forward",
                    "comment": "r1",
                    "expr": [{"counter": {"packets": 9, "bytes": 9}}],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "table": "astara_filter",
                    "name": "fw_0",
                    "elem": [
                        {
                            "elem": {
                                "val": "10.0.0.1",
                                "comment": "r2",
                                "counter": {"packets": 1, "bytes": 60},
                            }
                        }
                    ],
                }
            },
        ]
    }
    assert parse_counters(listing) == [
        RuleCounter("forward", "r1", 3, 180),
        RuleCounter("forward", "r2", 1, 60),
    ]


class RecordingRunner:
    def __init__(self, fail_on: str | None = None) -> None:
        self.scripts: list[str] = []
        self.fail_on = fail_on

    def run(self, script: str) -> None:
        self.scripts.append(script)
        if self.fail_on is not None and self.fail_on in script:
            raise ApplyStepError("firewall", "Error: boom")

    def list_json(self, what: str = "ruleset") -> dict[str, Any]:
        return {"nftables": []}


def test_applier_uses_a_delta_only_on_top_of_what_it_applied() -> None:
    runner = RecordingRunner()
    subsystem = NftablesSubsystem(runner)
    first = document()
    second = document(generation=2, floating_ips=[fip("172.24.0.10", "10.0.0.5")])
    subsystem.apply(first, None, LINKS)
    subsystem.apply(second, first, LINKS)
    assert runner.scripts[1] == render_delta(first, second, LINKS)
    assert runner.scripts[1].startswith("add element")
    # A "previous" it did not apply itself: full replace.
    subsystem.apply(first, document(snat_enabled=False), LINKS)
    assert runner.scripts[2].startswith("table inet astara_filter")
    subsystem.apply(None, first, LINKS)
    assert runner.scripts[3] == render_removal()


def test_applier_counts_the_writes_to_each_table_a_delta_the_nat_table_only() -> None:
    subsystem = NftablesSubsystem(RecordingRunner())
    first = document()
    second = document(generation=2, floating_ips=[fip("172.24.0.10", "10.0.0.5")])
    start = subsystem.versions()
    subsystem.apply(first, None, LINKS)
    full = subsystem.versions()
    assert all(full[table] != start[table] for table in TABLES)
    subsystem.apply(second, first, LINKS)
    delta = subsystem.versions()
    assert (delta[FILTER_TABLE], delta[NAT_TABLE]) == (full[FILTER_TABLE], full[NAT_TABLE] + 1)
    # Only the generation moved: the NAT elements are the same and nothing is written.
    subsystem.apply(second.model_copy(update={"generation": 3}), second, LINKS)
    assert subsystem.versions() == delta
    subsystem.apply(None, second, LINKS)
    assert all(subsystem.versions()[table] != delta[table] for table in TABLES)


def test_applier_reports_an_unknown_interface_as_its_step_error() -> None:
    runner = RecordingRunner()
    with pytest.raises(ApplyStepError, match="no kernel interface has MAC"):
        NftablesSubsystem(runner).apply(document(), None, {MGMT: "eth0"})
    assert runner.scripts == []


def test_applier_falls_back_to_a_full_replace_when_the_delta_fails() -> None:
    runner = RecordingRunner(fail_on="add element")
    subsystem = NftablesSubsystem(runner)
    first = document()
    second = document(generation=2, floating_ips=[fip("172.24.0.10", "10.0.0.5")])
    subsystem.apply(first, None, LINKS)
    subsystem.apply(second, first, LINKS)
    assert runner.scripts[-1] == render_ruleset(second, LINKS)


def test_a_failed_full_apply_raises_and_forgets_the_applied_state() -> None:
    runner = RecordingRunner(fail_on="172.24.0.10")
    subsystem = NftablesSubsystem(runner)
    first = document()
    broken = document(generation=2, floating_ips=[fip("172.24.0.10", "10.0.0.5")])
    subsystem.apply(first, None, LINKS)
    with pytest.raises(ApplyStepError) as failure:
        subsystem.apply(broken, first, LINKS)
    assert failure.value.step == "firewall"
    runner.fail_on = None
    subsystem.apply(document(generation=3), first, LINKS)
    assert runner.scripts[-1].startswith("table inet astara_filter")


def test_firewall_key_is_equal_exactly_when_the_sections_are() -> None:
    base = {
        "id": "r",
        "action": "allow",
        "direction": "ingress",
        "ip_version": 4,
        "protocol": "tcp",
        "source_cidr": "10.0.0.0/24",
        "destination_cidr": "10.1.0.0/24",
        "source_ports": {"first": 1000, "last": 2000},
        "destination_ports": {"first": 22, "last": 22},
    }
    # Every field of a rule is set above: a field added to the model must be added to the key.
    assert set(base) == set(FirewallRule.model_fields)
    variants = {
        "id": "s",
        "action": "deny",
        "direction": "egress",
        "ip_version": 6,
        "protocol": "udp",
        "source_cidr": "10.0.1.0/24",
        "destination_cidr": "10.1.0.0/25",
        "source_ports": {"first": 1000, "last": 2001},
        "destination_ports": {"first": 23, "last": 23},
    }

    def key(*rules: dict[str, Any], default: str = "allow") -> list[object]:
        return firewall_key(Firewall.model_validate({"default_action": default, "rules": rules}))

    assert key(base) == key(dict(base))
    assert key(base) != key(base, default="deny")
    assert key(base) != key(base, base)
    optional = {"id", "source_cidr", "destination_cidr", "source_ports", "destination_ports"}
    for name, value in variants.items():
        assert key(base) != key(dict(base, **{name: value})), name
        if name in optional:
            assert key(base) != key(dict(base, **{name: None})), name
    # The same number and prefix length in another family; a rule split across two slots.
    zero = dict(base, source_cidr="0.0.0.0/0")
    assert key(zero) != key(dict(base, source_cidr="::/0"))
    half = {"action": "allow", "source_cidr": "10.0.0.0/24"}
    assert key(half) != key({"action": "allow", "destination_cidr": "10.0.0.0/24"})


def test_firewall_key_tells_groups_apart_by_every_field() -> None:
    allow = rule("a", "allow", protocol="tcp")
    group = {"id": "g1", "interfaces": [INT1], "ingress": [allow], "egress": []}

    def key(*groups: dict[str, Any]) -> list[object]:
        return firewall_key(Firewall.model_validate({"groups": groups}))

    assert set(group) == set(FirewallGroup.model_fields)
    assert key(group) == key(dict(group))
    assert key(group) != key()
    for name, value in {
        "id": "g2",
        "interfaces": [INT1, INT2],
        "ingress": [],
        "egress": [allow],
    }.items():
        assert key(group) != key(dict(group, **{name: value})), name
    # A rule moved from one list to the next, or from a group to the router-wide rules.
    assert key(dict(group, ingress=[allow, allow])) != key(dict(group, egress=[allow]), group)
    assert firewall_key(Firewall.model_validate({"rules": [allow]})) != key(group)


def group_document(*groups: dict[str, Any], rules: Iterable[dict[str, Any]] = ()) -> str:
    return render_ruleset(document(firewall={"groups": groups, "rules": list(rules)}), LINKS)


def test_a_group_jumps_to_its_chains_from_its_interfaces_before_router_wide_rules() -> None:
    text = group_document(
        {
            "id": "g-1",
            "interfaces": [INT1, EXT],
            "ingress": [rule("in22", "allow", protocol="tcp", destination_ports=PORTS[0])],
            "egress": [rule("out", "allow")],
        },
        rules=[rule("wide", "deny", source_cidr="10.9.0.0/16")],
    )
    forward = chain(text, "forward")
    jumps = [line for line in forward if " jump " in line]
    # Neutron's sense: ingress is what leaves the router into the port's network.
    assert jumps == [
        'oifname "eth2" jump fwg_g-1_ingress',
        'oifname "eth1" jump fwg_g-1_ingress',
        'iifname "eth2" jump fwg_g-1_egress',
        'iifname "eth1" jump fwg_g-1_egress',
    ]
    assert forward.index(jumps[-1]) < next(i for i, r in enumerate(forward) if "wide" in r)
    assert forward[:2] == ["ct state established,related accept", "ct state invalid drop"]
    assert chain(text, "fwg_g-1_ingress") == [
        'meta nfproto ipv4 tcp dport 22 counter return comment "in22"',
        'counter drop comment "default drop"',
    ]
    assert chain(text, "fwg_g-1_egress")[0] == 'meta nfproto ipv4 counter return comment "out"'


def test_a_group_without_rules_drops_and_deny_and_reject_end_the_packet() -> None:
    text = group_document(
        {
            "id": "g",
            "interfaces": [INT2],
            "ingress": [rule("d", "deny", protocol="udp"), rule("j", "reject", protocol="tcp")],
        }
    )
    assert chain(text, "fwg_g_ingress") == [
        'meta nfproto ipv4 meta l4proto udp counter drop comment "d"',
        'meta nfproto ipv4 meta l4proto tcp counter goto reject_packet comment "j"',
        'counter drop comment "default drop"',
    ]
    assert chain(text, "fwg_g_egress") == ['counter drop comment "default drop"']


def test_a_groups_folded_sets_are_named_after_its_chain_and_counted_under_it() -> None:
    cidrs = [rule(f"r{n}", "allow", source_cidr=f"10.0.{n}.0/24") for n in range(3)]
    text = group_document(
        {"id": "g", "interfaces": [INT1], "egress": cidrs},
        rules=[rule(f"w{n}", "deny", source_cidr=f"10.1.{n}.0/24") for n in range(2)],
    )
    assert sets(text) == {"fwg_g_egress_s0": ["r0", "r1", "r2"], "fw_1": ["w0", "w1"]}
    assert 'ip saddr @fwg_g_egress_s0 counter return comment "set fwg_g_egress_s0"' in chain(
        text, "fwg_g_egress"
    )
    element = {"elem": {"val": "x", "comment": "r1", "counter": {"packets": 2, "bytes": 9}}}
    listing = {
        "nftables": [
            {"set": {"family": "inet", "table": "astara_filter", "name": name, "elem": [element]}}
            for name in sets(text)
        ]
    }
    assert {c.chain for c in parse_counters(listing)} == {"forward", "fwg_g_egress"}


def test_the_delta_check_compares_no_firewall_models(monkeypatch: pytest.MonkeyPatch) -> None:
    # With thousands of rules, model equality alone took longer than the whole delta may.
    rules = {"rules": [rule(f"r{n}", "deny", source_cidr=f"10.9.{n}.0/24") for n in range(50)]}
    runner = RecordingRunner()
    subsystem = NftablesSubsystem(runner)
    first = document(firewall=rules)
    second = document(generation=2, firewall=rules, floating_ips=[fip("172.24.0.10", "10.0.0.5")])
    assert first.firewall is not second.firewall
    subsystem.apply(first, None, LINKS)

    def refuse(self: object, other: object) -> bool:
        raise AssertionError("firewall models compared")

    monkeypatch.setattr(FirewallRule, "__eq__", refuse)
    subsystem.apply(second, first, LINKS)
    assert runner.scripts[-1] == (
        "add element ip astara_nat fip_dnat { 172.24.0.10 : 10.0.0.5 }\n"
        "add element ip astara_nat fip_dnat_keys { 172.24.0.10 }\n"
        "add element ip astara_nat fip_snat { 10.0.0.5 : 172.24.0.10 }\n"
        "add element ip astara_nat fip_snat_keys { 10.0.0.5 }\n"
    )


def test_a_firewall_section_shared_with_the_applied_document_is_not_keyed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A document read against the applied one carries its unchanged sections as the very
    # same objects (astara.appliance.intake): walking 5,000 rules again would cost ms.
    keyed: list[Firewall] = []
    real_key = nftables.firewall_key

    def counting(firewall: Firewall) -> list[object]:
        keyed.append(firewall)
        return real_key(firewall)

    monkeypatch.setattr(nftables, "firewall_key", counting)
    runner = RecordingRunner()
    subsystem = NftablesSubsystem(runner)
    first = document(firewall={"rules": [rule("r1", "deny", source_cidr="10.9.0.0/24")]})
    shared = first.model_copy(
        update={
            "generation": 2,
            "floating_ips": [FloatingIP.model_validate(fip("172.24.0.10", "10.0.0.5"))],
        }
    )
    subsystem.apply(first, None, LINKS)
    subsystem.apply(shared, first, LINKS)
    assert keyed == [first.firewall]
    assert runner.scripts[-1].startswith("add element")
    # An equal section that is another object is keyed (and still found equal).
    equal = document(generation=3, firewall=first.firewall.model_dump(mode="json"))
    subsystem.apply(equal, shared, LINKS)
    assert keyed == [first.firewall, equal.firewall]
    assert runner.scripts[-1].startswith("delete element")


# --- first-match order survives folding, for arbitrary rule lists ---------------------

CIDRS = ["10.0.0.0/16", "10.0.0.0/24", "10.0.1.0/24", "10.0.0.5/32", "10.0.1.7/32"]
PORTS = [{"first": 22, "last": 22}, {"first": 20, "last": 30}, {"first": 80, "last": 80}]

random_rule = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["allow", "deny", "reject"]),
        "direction": st.sampled_from(["ingress", "egress", "any"]),
        "protocol": st.sampled_from(["tcp", "udp"]),
        "source_cidr": st.none() | st.sampled_from(CIDRS),
        "destination_cidr": st.none() | st.sampled_from(CIDRS),
        "destination_ports": st.none() | st.sampled_from(PORTS),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(random_rule, min_size=1, max_size=30))
def test_folding_keeps_first_match_order(rules: list[dict[str, Any]]) -> None:
    numbered = [dict(r, id=f"r{i}") for i, r in enumerate(rules)]
    config = document(firewall={"rules": numbered})
    text = render_ruleset(config, LINKS)
    where = positions(text)
    management = {"management in", "management out"}
    assert set(where) == {r["id"] for r in numbered} | {"default action"} | management
    for i, a in enumerate(numbered):
        for b in numbered[i + 1 :]:
            if a["action"] != b["action"]:
                assert where[a["id"]] < where[b["id"]], (a, b)
    # nft refuses overlapping elements in one set: none may be rendered.
    filter_table = text.split("table ip astara_nat")[0]
    for body in re.findall(r"elements = \{ (.*?) \}\n", filter_table, re.S):
        values = [v.split(" comment")[0] for v in body.split(",\n")]
        bounds = [[_bounds(part) for part in v.strip().split(" . ")] for v in values]
        for x, first in enumerate(bounds):
            for second in bounds[x + 1 :]:
                assert not all(
                    lo1 <= hi2 and lo2 <= hi1
                    for (lo1, hi1), (lo2, hi2) in zip(first, second, strict=True)
                ), values


def _bounds(value: str) -> tuple[int, int]:
    if "." in value or ":" in value:
        net = ipaddress.ip_network(value)
        return int(net.network_address), int(net.broadcast_address)
    low, _, high = value.partition("-")
    return int(low), int(high or low)


# --- connections of removed translations (conntrack) ----------------------------------------


def forward(external_port: int, internal_ip: str = "10.0.0.6", **changes: Any) -> dict[str, Any]:
    return {
        "id": "pf1",
        "external_ip": "172.24.0.20",
        "protocol": "tcp",
        "external_port": {"first": external_port, "last": external_port + 9},
        "internal_ip": internal_ip,
        "internal_port": {"first": external_port, "last": external_port + 9},
        **changes,
    }


def test_a_moved_or_removed_floating_ip_ends_its_connections_both_ways() -> None:
    first = document(floating_ips=[fip("172.24.0.10", "10.0.0.5"), fip("172.24.0.11", "10.0.0.7")])
    moved = document(floating_ips=[fip("172.24.0.10", "10.0.0.6"), fip("172.24.0.11", "10.0.0.7")])
    assert stale_translations(first, moved) == [
        Cut(destination="172.24.0.10"),
        Cut(source="10.0.0.5", translated_to="172.24.0.10"),
    ]
    assert stale_translations(first, document(floating_ips=[fip("172.24.0.11", "10.0.0.7")])) == [
        Cut(destination="172.24.0.10"),
        Cut(source="10.0.0.5", translated_to="172.24.0.10"),
    ]
    assert stale_translations(first, first.model_copy(update={"generation": 2})) == []


def test_a_changed_port_forward_ends_connections_to_its_ports_but_a_new_id_alone_does_not() -> None:
    first = document(port_forwards=[forward(8000)])
    assert stale_translations(first, document(port_forwards=[forward(8000, id="pf2")])) == []
    cut = Cut(destination="172.24.0.20", protocol=socket.IPPROTO_TCP, ports=(8000, 8009))
    assert stale_translations(first, document(port_forwards=[forward(8000, "10.0.0.9")])) == [cut]
    assert stale_translations(first, document()) == [cut]
    assert cut.matches(8009, None) and not cut.matches(8010, None) and not cut.matches(None, None)


def test_source_nat_through_an_old_gateway_address_ends_when_it_changes_or_stops() -> None:
    first = document()
    old = Cut(translated_to="172.24.0.1")
    assert stale_translations(first, document(snat_enabled=False)) == [old]
    networks = first.model_dump(mode="json")["networks"]
    networks[1]["addresses"] = ["172.24.0.2/24"]
    assert stale_translations(first, document(networks=networks)) == [old]
    assert stale_translations(first, None) == [old]
    assert stale_translations(document(snat_enabled=False), None) == []
    assert old.matches(80, "172.24.0.1") and not old.matches(80, "172.24.0.9")


class RecordingTable:
    def __init__(self, error: Exception | None = None) -> None:
        self.cuts: list[list[Cut]] = []
        self.error = error

    def cut(self, cuts: Iterable[Cut]) -> int:
        self.cuts.append(list(cuts))
        if self.error is not None:
            raise self.error
        return 1


def test_the_conntrack_subsystem_cuts_only_over_a_previous_document_and_never_fails() -> None:
    first = document(floating_ips=[fip("172.24.0.10", "10.0.0.5")])
    table = RecordingTable()
    subsystem = ConntrackSubsystem(table)
    subsystem.apply(first, None, LINKS)  # a first apply, a re-apply or a restore
    subsystem.apply(first, first, LINKS)
    assert table.cuts == []
    subsystem.apply(document(), first, LINKS)
    assert table.cuts == [stale_translations(first, document())]
    # The new rules are in; lingering connections end with their timeout, no rollback.
    ConntrackSubsystem(RecordingTable(OSError("no conntrack netlink"))).apply(
        document(), first, LINKS
    )


def test_port_ranges_that_overlap_go_to_separate_sets_and_the_rest_share_one() -> None:
    from astara.appliance.nft_folding import Element, to_layers

    def ports(first: int, last: int, name: str) -> Element:
        return Element(f"{first}-{last}", ((first, last),), name)

    layers = to_layers(
        [ports(20, 30, "wide"), ports(25, 25, "inside"), ports(40, 40, "apart"),
         ports(28, 35, "across"), ports(31, 31, "next")],
        aligned=False,
    )  # fmt: skip
    names = [sorted(e.comment for e in layer.elements) for layer in layers]
    # 25 and 28-35 overlap 20-30; 31 overlaps 28-35; 40 overlaps nothing.
    assert names == [["apart", "next", "wide"], ["across", "inside"]]


def test_elements_overlap_only_when_every_dimension_does() -> None:
    from astara.appliance.nft_folding import intersects

    assert intersects(((1, 5), (10, 20)), ((5, 9), (20, 30)))
    assert not intersects(((1, 5), (10, 20)), ((5, 9), (21, 30)))
    assert not intersects(((1, 5), (10, 20)), ((6, 9), (10, 20)))


def test_a_directional_rule_needs_an_external_network_and_v6_sets_hold_v6_addresses() -> None:
    from astara.appliance.nft_folding import Shape, match_prefix, set_type_of

    ingress = Shape("ingress", 4, "tcp", ("destination_ports",))
    assert match_prefix(ingress, None) is None
    assert match_prefix(ingress, "eth1") == 'iifname "eth1" meta nfproto ipv4'
    egress = Shape("egress", 6, "icmp", ())
    assert match_prefix(egress, "eth1") == 'oifname "eth1" meta nfproto ipv6 meta l4proto ipv6-icmp'
    v6 = Shape("any", 6, "udp", ("source_cidr", "destination_ports"))
    assert set_type_of(v6) == "ipv6_addr . inet_service"
