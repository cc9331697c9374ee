"""neutron-fwaas firewall groups through the router driver, and their statuses for Neutron."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from astara.drivers.router import firewall_group_statuses, render
from astara.orchestrator.neutron_status import status_body
from astara.orchestrator.reconciler import _groups_stale, snapshot_digest
from astara.orchestrator.state import State
from astara.wire.document import PortRange, problems
from tests.unit.test_router_driver import MGMT, recorded, snapshot_of

pytestmark = pytest.mark.unit

PRIVATE_A = "bf270ca0-fe74-47ac-9bb1-613f8b647b4c"  # two interface ports on one network
PRIVATE_B = "c5c285e1-4a7b-4ffe-8b46-b9c38fb0c38e"
BACKEND = "c4a5da8c-a13b-4a5e-87cb-0eeb645f2ac7"
GATEWAY = "06d61a8b-da6c-4bac-9360-b237c796a466"


def fw_rule(rule_id: str, action: str = "allow", **fields: Any) -> dict[str, Any]:
    """A rule as neutron-fwaas 25's API shows it."""
    rule = {
        "id": rule_id,
        "name": "",
        "description": "",
        "project_id": "p",
        "protocol": None,
        "ip_version": 4,
        "source_ip_address": None,
        "destination_ip_address": None,
        "source_port": None,
        "destination_port": None,
        "source_firewall_group_id": None,
        "destination_firewall_group_id": None,
        "action": action,
        "enabled": True,
        "shared": False,
        "firewall_policy_id": [],
    }
    return {**rule, **fields}


def fw_group(group_id: str, ports: list[str], **fields: Any) -> dict[str, Any]:
    group = {
        "id": group_id,
        "name": "",
        "project_id": "p",
        "ports": ports,
        "ingress_firewall_policy_id": "pol-in",
        "egress_firewall_policy_id": None,
        "admin_state_up": True,
        "status": "PENDING_CREATE",
        "shared": False,
    }
    return {**group, **fields}


POLICIES = [
    {"id": "pol-in", "firewall_rules": ["ssh", "off", "web"], "audited": False, "shared": True},
    {"id": "pol-out", "firewall_rules": ["dns6"], "audited": True, "shared": False},
]
RULES = [
    fw_rule("ssh", protocol="tcp", destination_port="22", source_ip_address="172.24.4.7"),
    fw_rule("off", "deny", enabled=False),
    fw_rule("web", "reject", protocol="tcp", destination_port="8000:8080"),
    fw_rule("dns6", ip_version=6, protocol="udp", destination_ip_address="fd00::/64"),
]


def snapshot_with(groups: list[dict[str, Any]], rules: list[dict[str, Any]] = RULES) -> Any:
    raw = recorded()
    return snapshot_of(raw).model_validate(
        {
            **snapshot_of(raw).model_dump(by_alias=True),
            "firewall_groups": groups,
            "firewall_policies": POLICIES,
            "firewall_rules": rules,
        }
    )


def test_a_group_becomes_rule_lists_on_the_nic_of_its_ports_network() -> None:
    snapshot = snapshot_with(
        [fw_group("g1", [PRIVATE_B, BACKEND], egress_firewall_policy_id="pol-out")]
    )
    config = render(snapshot, 7, MGMT)
    assert problems(config) == []
    (group,) = config.firewall.groups
    nics = {net.id: net.interface_mac for net in config.networks}
    # PRIVATE_B shares its network's NIC with PRIVATE_A, the port that NIC is plugged for.
    assert group.interfaces == sorted(
        [nics["ec36e515-a818-48c9-bcd4-29ec2f27da90"], nics["dfb94241-a674-4da2-8c32-3fd86eb3c3e6"]]
    )
    assert [(r.id, r.action) for r in group.ingress] == [("ssh", "allow"), ("web", "reject")]
    ssh, web = group.ingress
    assert (ssh.protocol, ssh.destination_ports, ssh.source_cidr) == (
        "tcp",
        PortRange(first=22, last=22),
        ipaddress.ip_network("172.24.4.7/32"),
    )
    assert web.destination_ports == PortRange(first=8000, last=8080)
    (dns6,) = group.egress
    assert (dns6.ip_version, dns6.protocol, str(dns6.destination_cidr)) == (6, "udp", "fd00::/64")
    assert firewall_group_statuses(snapshot) == {"g1": "ACTIVE"}


def test_groups_on_no_port_of_this_router_are_left_out() -> None:
    snapshot = snapshot_with([fw_group("elsewhere", ["some-other-port"]), fw_group("g", [])])
    assert render(snapshot, 7, MGMT).firewall.groups == []
    assert firewall_group_statuses(snapshot) == {}


def test_a_rule_the_appliance_cannot_enforce_closes_its_group_and_reports_error() -> None:
    remote = fw_rule("ssh", protocol="tcp", source_firewall_group_id="g9")
    for rules in (
        [remote, *RULES[1:]],
        [fw_rule("ssh", protocol="132"), *RULES[1:]],  # SCTP: no rule to render
        RULES[1:],  # a rule of the policy that could not be read
        [*RULES[:3], fw_rule("dns6", protocol="132")],  # in the egress policy: ingress too
    ):
        group = fw_group("g1", [BACKEND], egress_firewall_policy_id="pol-out")
        snapshot = snapshot_with([group], rules)
        (rendered,) = render(snapshot, 7, MGMT).firewall.groups
        assert (rendered.ingress, rendered.egress) == ([], [])
        assert firewall_group_statuses(snapshot) == {"g1": "ERROR"}


def test_an_admin_down_group_drops_everything_and_is_down() -> None:
    snapshot = snapshot_with([fw_group("g1", [BACKEND], admin_state_up=False)])
    (group,) = render(snapshot, 7, MGMT).firewall.groups
    assert (group.ingress, group.egress) == ([], [])
    assert firewall_group_statuses(snapshot) == {"g1": "DOWN"}


def test_the_status_neutron_shows_does_not_change_the_digest() -> None:
    pending = snapshot_with([fw_group("g1", [BACKEND])])
    active = snapshot_with([fw_group("g1", [BACKEND], status="ACTIVE")])
    assert snapshot_digest(pending) == snapshot_digest(active)
    moved = snapshot_with([fw_group("g1", [PRIVATE_A])])
    assert snapshot_digest(pending) != snapshot_digest(moved)


def test_group_statuses_are_written_once_the_router_settles() -> None:
    groups = {"g1": "ACTIVE", "g2": "DOWN"}
    active = status_body(State.ACTIVE, [GATEWAY], groups)
    assert active is not None
    assert active["router_status"]["firewall_group_statuses"] == groups
    error = status_body(State.ERROR, [GATEWAY], groups)
    assert error is not None
    assert error["router_status"]["firewall_group_statuses"] == {"g1": "ERROR", "g2": "ERROR"}
    booting = status_body(State.BOOTING, [GATEWAY], groups)
    assert booting is not None and "firewall_group_statuses" not in booting["router_status"]


def test_a_group_still_shown_otherwise_is_written_even_when_the_document_is_unchanged() -> None:
    pending = snapshot_with([fw_group("g1", [BACKEND], status="PENDING_UPDATE")])
    active = snapshot_with([fw_group("g1", [BACKEND], status="ACTIVE")])
    rendered = firewall_group_statuses(active)
    assert _groups_stale(pending, State.ACTIVE, rendered)
    assert not _groups_stale(active, State.ACTIVE, rendered)
    assert _groups_stale(active, State.ERROR, rendered)  # to be shown in ERROR
    assert not _groups_stale(pending, State.BOOTING, rendered)  # nothing to say yet
