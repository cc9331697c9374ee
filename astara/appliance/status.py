"""What the appliance reports about itself: interfaces and traffic counters.

The readers run in the appliance's own namespace. Turning netlink messages into the API's
shapes is pure (``interfaces_from_netlink``, ``link_counters_from_netlink``) so it is testable
without root; ``KernelStatus`` only gathers the messages and the packet-filter counters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from pyroute2 import IPRoute

CONNTRACK_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")


class InterfaceStatus(BaseModel):
    name: str
    mac: str
    addresses: list[str]
    mtu: int
    state: str


class InterfaceCounters(BaseModel):
    name: str
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int


class RuleCounter(BaseModel):
    """One counted rule of the packet filter or NAT: its chain, its comment, what it matched."""

    chain: str
    rule: str
    packets: int
    bytes: int


class CountedRule(Protocol):
    """What the packet-filter module reports per rule (nftables.RuleCounter)."""

    @property
    def chain(self) -> str: ...
    @property
    def comment(self) -> str: ...
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class Counters(BaseModel):
    interfaces: list[InterfaceCounters]
    rules: list[RuleCounter]
    conntrack_entries: int | None


class StatusReader(Protocol):
    def interfaces(self) -> list[InterfaceStatus]: ...

    def counters(self) -> Counters: ...


def _by_index(addrs: Iterable[Any]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for msg in addrs:
        ip = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
        if ip is None:
            continue
        found.setdefault(msg["index"], []).append(
            str(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))
        )
    return found


def interfaces_from_netlink(links: Iterable[Any], addrs: Iterable[Any]) -> list[InterfaceStatus]:
    """RTM_NEWLINK and RTM_NEWADDR dumps (pyroute2 messages) -> interface list, by name."""
    addresses = _by_index(addrs)
    result = [
        InterfaceStatus(
            name=str(link.get("IFLA_IFNAME")),
            mac=str(link.get("IFLA_ADDRESS") or "").lower(),
            addresses=sorted(addresses.get(link["index"], [])),
            mtu=int(link.get("IFLA_MTU") or 0),
            state=str(link.get("IFLA_OPERSTATE") or "unknown").lower(),
        )
        for link in links
    ]
    return sorted(result, key=lambda iface: iface.name)


def link_counters_from_netlink(links: Iterable[Any]) -> list[InterfaceCounters]:
    result = []
    for link in links:
        stats: Mapping[str, int] = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
        result.append(
            InterfaceCounters(
                name=str(link.get("IFLA_IFNAME")),
                rx_packets=int(stats.get("rx_packets", 0)),
                rx_bytes=int(stats.get("rx_bytes", 0)),
                tx_packets=int(stats.get("tx_packets", 0)),
                tx_bytes=int(stats.get("tx_bytes", 0)),
            )
        )
    return sorted(result, key=lambda counters: counters.name)


def read_conntrack_count(path: Path = CONNTRACK_COUNT) -> int | None:
    """Tracked connections in this namespace; None when conntrack is not loaded here."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class KernelStatus:
    """Reads the namespace it runs in; ``rule_counters`` comes from the packet-filter module."""

    def __init__(self, rule_counters: Callable[[], Iterable[CountedRule]]) -> None:
        self._rule_counters = rule_counters

    def interfaces(self) -> list[InterfaceStatus]:
        with IPRoute() as ipr:
            return interfaces_from_netlink(ipr.get_links(), ipr.get_addr())

    def counters(self) -> Counters:
        with IPRoute() as ipr:
            links = link_counters_from_netlink(ipr.get_links())
        return Counters(
            interfaces=links,
            rules=[
                RuleCounter(chain=c.chain, rule=c.comment, packets=c.packets, bytes=c.bytes)
                for c in self._rule_counters()
            ],
            conntrack_entries=read_conntrack_count(),
        )
