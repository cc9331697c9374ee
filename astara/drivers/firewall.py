"""neutron-fwaas v2 firewall groups in, the document's firewall groups and their statuses out.

Pure: the router driver passes what Neutron says about the groups on the router's interfaces
(with their policies and rules) and the MAC of the appliance NIC behind each interface port.

What a group becomes (see ``astara.wire.document.FirewallGroup``): its ingress policy's
enabled rules, in the policy's order, judge what the router sends into the port's network, its
egress policy's what it receives from it; a direction without a policy lets nothing through
(neutron-fwaas's own reference driver does the same). A group whose admin state is down drops
everything but established connections and is reported DOWN. A rule Astara cannot render
(another protocol than tcp, udp or icmp; remote firewall groups as source or destination)
makes its whole group drop everything and report ERROR: failing open would let through what
the tenant meant to stop. ``shared`` and the policy's ``audited`` flag change nothing here
(``audited`` is bookkeeping of fwaas's API; the appliance applies what it is given).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field

from astara.drivers.neutron_model import NeutronModel
from astara.wire.document import FirewallGroup, FirewallRule, PortRange

ACTIVE, ERROR, DOWN = "ACTIVE", "ERROR", "DOWN"
PROTOCOLS = {None: "any", "tcp": "tcp", "udp": "udp", "icmp": "icmp", "ipv6-icmp": "icmp"}


class NeutronFirewallRule(NeutronModel):
    id: str
    action: str
    enabled: bool = True
    ip_version: int = 4
    protocol: str | None = None
    source_ip_address: str | None = None
    destination_ip_address: str | None = None
    source_port: str | None = None
    destination_port: str | None = None
    source_firewall_group_id: str | None = None
    destination_firewall_group_id: str | None = None


class NeutronFirewallPolicy(NeutronModel):
    id: str
    firewall_rules: list[str] = Field(default_factory=list)  # rule ids, in order


class NeutronFirewallGroup(NeutronModel):
    id: str
    ports: list[str] = Field(default_factory=list)
    ingress_firewall_policy_id: str | None = None
    egress_firewall_policy_id: str | None = None
    admin_state_up: bool = True
    # What Neutron shows now: compared with what the appliance did, never rendered (excluded,
    # so that writing it does not change the snapshot's digest).
    status: str = Field("", exclude=True)


class Unsupported(ValueError):
    """A rule the appliance cannot enforce as Neutron means it."""


@dataclass(frozen=True)
class RenderedGroups:
    groups: list[FirewallGroup]
    # Group id -> ACTIVE, ERROR or DOWN, for the groups on this router's interfaces.
    statuses: dict[str, str]
    # Group id -> why it is in ERROR.
    errors: dict[str, str]


def firewall_groups(
    groups: list[NeutronFirewallGroup],
    policies: list[NeutronFirewallPolicy],
    rules: list[NeutronFirewallRule],
    interface_macs: Mapping[str, str],
) -> RenderedGroups:
    """``interface_macs``: the router's interface port ids -> their appliance NIC's MAC."""
    by_policy = {policy.id: policy for policy in policies}
    by_rule = {rule.id: rule for rule in rules}
    rendered: list[FirewallGroup] = []
    statuses: dict[str, str] = {}
    errors: dict[str, str] = {}
    for group in sorted(groups, key=lambda g: g.id):
        macs = sorted({interface_macs[p] for p in group.ports if p in interface_macs})
        if not macs:
            continue
        status = ACTIVE
        lists: dict[str, list[FirewallRule]] = {"ingress": [], "egress": []}
        if not group.admin_state_up:
            status = DOWN
        else:
            try:
                for direction in lists:
                    policy_id = getattr(group, f"{direction}_firewall_policy_id")
                    lists[direction] = _policy_rules(policy_id, by_policy, by_rule)
            except Unsupported as exc:
                errors[group.id] = str(exc)
                status, lists = ERROR, {"ingress": [], "egress": []}
        rendered.append(FirewallGroup(id=group.id, interfaces=macs, **lists))
        statuses[group.id] = status
    return RenderedGroups(rendered, statuses, errors)


def _policy_rules(
    policy_id: str | None,
    policies: Mapping[str, NeutronFirewallPolicy],
    rules: Mapping[str, NeutronFirewallRule],
) -> list[FirewallRule]:
    if policy_id is None:
        return []
    policy = policies.get(policy_id)
    if policy is None:
        raise Unsupported(f"policy {policy_id} could not be read")
    found: list[FirewallRule] = []
    for rule_id in policy.firewall_rules:
        rule = rules.get(rule_id)
        if rule is None:
            raise Unsupported(f"rule {rule_id} of policy {policy_id} could not be read")
        if rule.enabled:
            found.append(_rule(rule))
    return found


def _rule(rule: NeutronFirewallRule) -> FirewallRule:
    where = f"rule {rule.id}"
    if rule.source_firewall_group_id or rule.destination_firewall_group_id:
        raise Unsupported(f"{where}: remote firewall groups are not supported")
    if rule.protocol not in PROTOCOLS:
        raise Unsupported(f"{where}: protocol {rule.protocol} is not tcp, udp or icmp")
    if rule.action not in ("allow", "deny", "reject"):
        raise Unsupported(f"{where}: action {rule.action}")
    try:
        return FirewallRule(
            id=rule.id,
            action=rule.action,
            ip_version=rule.ip_version,
            protocol=PROTOCOLS[rule.protocol],
            source_cidr=_cidr(rule.source_ip_address),
            destination_cidr=_cidr(rule.destination_ip_address),
            source_ports=_ports(rule.source_port),
            destination_ports=_ports(rule.destination_port),
        )
    except ValueError as exc:
        raise Unsupported(f"{where}: {exc}") from exc


def _cidr(value: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    return None if not value else ipaddress.ip_network(value, strict=False)


def _ports(value: str | None) -> PortRange | None:
    """neutron-fwaas's "80" or "8000:8080"."""
    if not value:
        return None
    first, _, last = value.partition(":")
    return PortRange(first=int(first), last=int(last or first))
