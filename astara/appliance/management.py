"""The management plane's own routing domain: a routing table and rules in front of main.

Tenant data fills the main table (Neutron's extra routes, tenant subnets, the external
default route). Whatever it holds, traffic to and from the management network must not
follow it: one route to the orchestrator's address via a tenant VM used to cut the
appliance off. So the management NIC's prefixes live in table ``MANAGEMENT_TABLE`` too,
with rules at priority ``MANAGEMENT_PRIORITY`` (before main's 32766) sending there

* everything addressed to a management prefix or to another management destination (the
  heartbeat target, when it lies outside the prefix), and
* everything sent from a management address (the API's answers);

and the table ends with an ``unreachable`` default, so such a lookup never falls through to
main. Routes via the management NIC that someone else put in main (a management gateway
set at first boot) are moved into the table. Forwarding between tenants and management is
refused by the packet filter (``nftables.py``); the document refuses tenant subnets and
routes that overlap management (``astara.wire.document.problems``).

Why a table and rules rather than a VRF: this kernel has no VRF (``ip link add mgmt type
vrf table 78`` answers "Unknown device type"), and rules need no change to any socket: the
API server, the heartbeat sender and the metadata proxy's upstream connections are routed
right without binding to a device. The appliance sets it up itself, at start (from the
interface holding ``--listen``: the netns provider or first boot configured it) and on
every apply (from the document), idempotently.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from astara.appliance.netlink import (
    MAIN_TABLE,
    ROUTE_PROTO,
    KernelDump,
    KernelRoute,
    LinkNotFoundError,
)

MANAGEMENT_TABLE = 78
MANAGEMENT_PRIORITY = 100
# Routes of main via the management NIC that belong to management (RTPROT_BOOT: `ip route
# add`; RTPROT_STATIC; RTPROT_DHCP): moved to its table.
MOVED_PROTOCOLS = frozenset({3, 4, 16})
UNREACHABLE_METRIC = 4278198272  # the largest metric iproute2 uses: anything else wins
SCOPE_LINK = 253
RTN_UNREACHABLE = 7

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class DomainRule:
    family: int
    selector: str  # "to" or "from"
    network: str


@dataclass(frozen=True, order=True)
class DomainRoute:
    family: int
    destination: str
    gateway: str | None
    ifname: str | None  # None: the unreachable default
    source: str | None = None


@dataclass(frozen=True)
class DomainPlan:
    rules: frozenset[DomainRule]
    routes: frozenset[DomainRoute]


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def plan_domain(
    ifname: str,
    addresses: Iterable[IpInterface],
    destinations: Iterable[IpAddress] = (),
    gateways: Iterable[DomainRoute] = (),
) -> DomainPlan:
    """The rules and routes of the management domain (pure).

    ``addresses``: the management NIC's global addresses; ``destinations``: other hosts
    only reached over management; ``gateways``: routes via the NIC moved from main.
    """
    addresses = list(addresses)
    rules = set()
    routes = {
        DomainRoute(_family(v), "0.0.0.0/0" if v == 4 else "::/0", None, None) for v in (4, 6)
    }
    prefixes: set[str] = set()
    for address in addresses:
        family, prefix = _family(address.version), str(address.network)
        rules.add(DomainRule(family, "to", prefix))
        rules.add(DomainRule(family, "from", str(ipaddress.ip_network(address.ip))))
        if prefix not in prefixes:  # one route per prefix, from its first address
            prefixes.add(prefix)
            routes.add(DomainRoute(family, prefix, None, ifname, str(address.ip)))
    for host in destinations:
        if not any(host.version == a.version and host in a.network for a in addresses):
            rules.add(DomainRule(_family(host.version), "to", str(ipaddress.ip_network(host))))
    routes |= set(gateways)
    return DomainPlan(frozenset(rules), frozenset(routes))


class ManagementDomain:
    """Makes the kernel hold one DomainPlan: reads through KernelDump, changes through
    pyroute2; idempotent."""

    def __init__(self, destinations: Sequence[IpAddress] = (), ipr: IPRoute | None = None) -> None:
        """``destinations``: hosts reached over management only (the heartbeat target)."""
        self.destinations = tuple(destinations)
        self.ipr = ipr if ipr is not None else IPRoute()
        self.dump = KernelDump()
        self._ensured: tuple[object, ...] | None = None

    def close(self) -> None:
        self.ipr.close()
        self.dump.close()

    def interface_holding(self, ip: str) -> str | None:
        """The name of the interface that carries ``ip``, if any."""
        wanted = ipaddress.ip_address(ip)
        names = self._names()
        return next(
            (names[a.index] for a in self.dump.addresses() if ipaddress.ip_address(a.ip) == wanted),
            None,
        )

    def addresses(self, ifname: str) -> list[IpInterface]:
        """The global addresses of ``ifname``."""
        index = self._index(ifname)
        found = [
            ipaddress.ip_interface(f"{a.ip}/{a.prefixlen}")
            for a in self.dump.addresses()
            if a.index == index
        ]
        return [address for address in found if not address.ip.is_link_local]

    def ensure(
        self, ifname: str, addresses: Sequence[IpInterface], trust_last: bool = False
    ) -> None:
        """Make the domain of ``ifname`` hold exactly what its addresses need.
        ``trust_last``: skip when the same was ensured last time (the kernel is trusted to
        be as left: the apply fast path, where a dump would cost more than the change)."""
        key = (ifname, tuple(sorted(map(str, addresses))))
        if trust_last and key == self._ensured:
            return
        self._ensured = None
        index = self._index(ifname)
        names = self._names()
        routes = self.dump.routes()
        ours = {_domain_route(r, names) for r in routes if r.table == MANAGEMENT_TABLE}
        gateways = [route for route in ours if route.gateway is not None]
        for route in routes:
            if (
                route.table == MAIN_TABLE
                and route.oif == index
                and route.gateway is not None
                and route.proto in MOVED_PROTOCOLS
            ):
                gateways.append(_domain_route(route, names))
                self._move_out_of_main(route)
        plan = plan_domain(ifname, addresses, self.destinations, gateways)
        for stale in sorted(ours - plan.routes):
            _tolerant(lambda r=stale: self.ipr.route("del", **self._route_args(r)))
        for missing in sorted(plan.routes - ours):
            self.ipr.route("replace", **self._route_args(missing))
        self._converge_rules(plan.rules)
        self._ensured = key

    def _names(self) -> dict[int, str]:
        return {link.index: link.name for link in self.dump.links()}

    def _index(self, ifname: str) -> int:
        found = [index for index, name in self._names().items() if name == ifname]
        if not found:
            raise LinkNotFoundError(f"no interface named {ifname}")
        return found[0]

    def _move_out_of_main(self, route: KernelRoute) -> None:
        args: dict[str, Any] = {
            "family": route.family,
            "table": MAIN_TABLE,
            "dst_len": route.dst_len,
            "gateway": route.gateway,
            "oif": route.oif,
        }
        if route.dst_len:
            args["dst"] = route.dst
        _tolerant(lambda: self.ipr.route("del", **args))

    def _route_args(self, route: DomainRoute) -> dict[str, Any]:
        network = ipaddress.ip_network(route.destination)
        args: dict[str, Any] = {
            "family": route.family,
            "table": MANAGEMENT_TABLE,
            "dst_len": network.prefixlen,
            "proto": ROUTE_PROTO,
        }
        if network.prefixlen:
            args["dst"] = str(network.network_address)
        if route.ifname is None:
            args.update(type="unreachable", priority=UNREACHABLE_METRIC)
            return args
        args["oif"] = self._index(route.ifname)
        if route.gateway is not None:
            args["gateway"] = route.gateway
        else:
            args["scope"] = SCOPE_LINK
        if route.source is not None:
            args["prefsrc"] = route.source
        return args

    def _converge_rules(self, wanted: frozenset[DomainRule]) -> None:
        have: set[DomainRule] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ipr.get_rules(family=family):
                if msg.get_attr("FRA_TABLE") != MANAGEMENT_TABLE:
                    continue
                selector = "to" if msg["dst_len"] else "from"
                ip = msg.get_attr("FRA_DST") if selector == "to" else msg.get_attr("FRA_SRC")
                length = msg["dst_len"] if selector == "to" else msg["src_len"]
                have.add(DomainRule(family, selector, str(ipaddress.ip_network(f"{ip}/{length}"))))
        for rule in sorted(have - wanted):
            _tolerant(lambda r=rule: self.ipr.rule("del", **_rule_args(r)))
        for rule in sorted(wanted - have):
            self.ipr.rule("add", **_rule_args(rule))


def _domain_route(route: KernelRoute, names: dict[int, str]) -> DomainRoute:
    network = ipaddress.ip_network(f"{route.dst or _any(route.family)}/{route.dst_len}")
    if route.kind == RTN_UNREACHABLE:
        return DomainRoute(route.family, str(network), None, None)
    return DomainRoute(
        route.family,
        str(network),
        str(ipaddress.ip_address(route.gateway)) if route.gateway else None,
        names.get(route.oif) if route.oif is not None else None,
        str(ipaddress.ip_address(route.prefsrc)) if route.prefsrc and not route.gateway else None,
    )


def _rule_args(rule: DomainRule) -> dict[str, Any]:
    network = ipaddress.ip_network(rule.network)
    side = "dst" if rule.selector == "to" else "src"
    return {
        "family": rule.family,
        "table": MANAGEMENT_TABLE,
        "priority": MANAGEMENT_PRIORITY,
        side: str(network.network_address),
        f"{side}_len": network.prefixlen,
    }


def _any(family: int) -> str:
    return "0.0.0.0" if family == socket.AF_INET else "::"


def _tolerant(call: Any) -> None:
    """A delete of something already gone is no error."""
    try:
        call()
    except LinkNotFoundError:
        return  # its interface is gone, and its routes went with it
    except NetlinkError as exc:
        if exc.code not in (2, 3):  # ENOENT, ESRCH
            raise
