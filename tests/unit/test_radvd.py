"""radvd.conf rendering per IPv6 RA mode, and the withdrawal of removed prefixes (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.radvd import (
    RadvdSubsystem,
    RaInterface,
    RaPrefix,
    ra_interfaces,
    render_conf,
)
from astara.wire.document import ApplianceConfig

pytestmark = pytest.mark.unit

A, B = "02:00:00:00:00:03", "02:00:00:00:00:04"
LINKS = {A: "qr-a", B: "qr-b"}


def subnet(cidr: str, mode: str | None, dns: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": cidr.replace(":", "").replace("/", "-"),
        "cidr": cidr,
        "ipv6_ra_mode": mode,
        "ipv6_address_mode": mode,
        "dns_nameservers": dns or [],
    }


def config(
    a_subnets: list[dict[str, Any]], b_subnets: list[dict[str, Any]], a_mtu: int = 1500
) -> ApplianceConfig:
    def net(name: str, mac: str, subnets: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": name,
            "kind": "internal",
            "interface_mac": mac,
            "addresses": ["10.9.0.1/24", "2001:db8:a::1/64"] if name == "a" else ["10.8.0.1/24"],
            "subnets": subnets,
        }

    return ApplianceConfig.model_validate(
        {
            "generation": 1,
            "router_id": "r",
            "hostname": "r",
            "interfaces": [{"mac": A, "mtu": a_mtu}, {"mac": B}],
            "networks": [net("a", A, a_subnets), net("b", B, b_subnets)],
        }
    )


def block(conf: str, ifname: str) -> str:
    match = re.search(rf"^interface {ifname} \{{\n(.*?)^\}};$", conf, re.S | re.M)
    assert match, conf
    return match.group(1)


def prefix_block(conf: str, cidr: str) -> str:
    match = re.search(rf"prefix {re.escape(cidr)} \{{\n(.*?)\t\}};", conf, re.S)
    assert match, conf
    return match.group(1)


def test_modes_set_flags_and_autonomy() -> None:
    doc = config(
        [
            {"id": "v4", "cidr": "10.9.0.0/24"},
            subnet("2001:db8:a::/64", "slaac", ["2001:db8::53", "2001:db8::54"]),
        ],
        [
            subnet("2001:db8:b::/64", "dhcpv6-stateful"),
            subnet("2001:db8:c::/64", "dhcpv6-stateless"),
        ],
    )
    conf = render_conf(ra_interfaces(doc, LINKS))
    a, b = block(conf, "qr-a"), block(conf, "qr-b")
    assert "AdvManagedFlag off;" in a and "AdvOtherConfigFlag off;" in a
    assert "AdvAutonomous on;" in prefix_block(conf, "2001:db8:a::/64")
    # The router's own address: it resolves for the network (and forwards to 2001:db8::53).
    assert "RDNSS 2001:db8:a::1 {" in a
    assert re.search(r"AdvRDNSSLifetime \d+;", a)
    assert "AdvManagedFlag on;" in b and "AdvOtherConfigFlag on;" in b
    assert "AdvAutonomous off;" in prefix_block(conf, "2001:db8:b::/64")
    assert "AdvAutonomous on;" in prefix_block(conf, "2001:db8:c::/64")
    assert "RDNSS" not in b
    assert "10.9.0.0" not in conf
    for cidr in ("2001:db8:a::/64", "2001:db8:b::/64"):
        body = prefix_block(conf, cidr)
        assert "AdvValidLifetime 86400;" in body and "AdvPreferredLifetime 14400;" in body


def test_subnets_without_ra_mode_are_not_advertised() -> None:
    doc = config([subnet("2001:db8:a::/64", None)], [])
    assert ra_interfaces(doc, LINKS) == []
    assert render_conf([]) == ""


def test_withdrawn_prefix_is_advertised_deprecated() -> None:
    doc = config([subnet("2001:db8:a::/64", "slaac")], [])
    ifaces = ra_interfaces(
        doc, LINKS, deprecated=[("qr-a", "2001:db8:old::/64"), ("qr-a", "2001:db8:a::/64")]
    )
    # A prefix that is back in the document is advertised normally, not deprecated.
    assert ifaces == [
        RaInterface(
            "qr-a",
            (RaPrefix("2001:db8:a::/64", "slaac"),),
            ("2001:db8:a::1",),
            ("2001:db8:old::/64",),
            1500,
        )
    ]
    old = prefix_block(render_conf(ifaces), "2001:db8:old::/64")
    assert "AdvPreferredLifetime 0;" in old


def test_the_interface_mtu_is_advertised() -> None:
    doc = config([subnet("2001:db8:a::/64", "slaac")], [], a_mtu=1400)
    assert "AdvLinkMTU 1400;" in block(render_conf(ra_interfaces(doc, LINKS)), "qr-a")
    # Withdrawn prefixes only (no network left): no MTU is claimed.
    assert "AdvLinkMTU" not in render_conf([RaInterface("qr-b", (), (), ("2001:db8:b::/64",))])


def test_interface_with_only_withdrawn_prefixes_is_no_default_router() -> None:
    conf = render_conf([RaInterface("qr-b", (), (), ("2001:db8:b::/64",))])
    assert "AdvDefaultLifetime 0;" in block(conf, "qr-b")


def test_subsystem_deprecates_removed_prefix_until_its_time_is_up(tmp_path: Path) -> None:
    now = [100.0]
    sub = RadvdSubsystem(tmp_path, deprecate_seconds=60, clock=lambda: now[0])
    before = config([subnet("2001:db8:a::/64", "slaac"), subnet("2001:db8:d::/64", "slaac")], [])
    after = config([subnet("2001:db8:a::/64", "slaac")], [])
    started: list[tuple[str, ...]] = []

    def ensure(argv: Sequence[str]) -> bool:
        started.append(tuple(argv))
        return True

    sub.daemon.ensure = ensure  # type: ignore[method-assign]

    sub.apply(after, before, LINKS)
    assert "AdvPreferredLifetime 0;" in prefix_block(sub.conf_file.read_text(), "2001:db8:d::/64")
    now[0] = 161.0
    sub.apply(after, after, LINKS)
    assert "2001:db8:d::" not in sub.conf_file.read_text()
    assert started[0][:2] == ("radvd", "--nodaemon")
    assert str(tmp_path / "radvd.pid") in started[0]
