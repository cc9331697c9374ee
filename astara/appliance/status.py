"""What the appliance reports about itself: interfaces and traffic counters.

The readers run in the appliance's own namespace. Turning netlink messages into the API's
shapes is pure (``interfaces_from_netlink``, ``link_counters_from_netlink``) so it is testable
without root; ``KernelStatus`` only gathers the messages and the packet-filter counters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from pyroute2 import IPRoute

from astara.appliance.management import MANAGEMENT_TABLE
from astara.appliance.netlink import MAIN_TABLE, KernelDump
from astara.appliance.subsystem import LinkMap
from astara.common.processes import is_alive

CONNTRACK_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")


class InterfaceStatus(BaseModel):
    name: str
    mac: str
    addresses: list[str]
    mtu: int
    state: str
    port_id: str | None = None  # the Neutron port, when the applied document names it


class InterfaceCounters(BaseModel):
    name: str
    port_id: str | None = None
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


def _mac(link: Any) -> str:
    return str(link.get("IFLA_ADDRESS") or "").lower()


def interfaces_from_netlink(
    links: Iterable[Any], addrs: Iterable[Any], ports: Mapping[str, str] | None = None
) -> list[InterfaceStatus]:
    """RTM_NEWLINK and RTM_NEWADDR dumps (pyroute2 messages) -> interface list, by name;
    ``ports``: MAC -> Neutron port id."""
    addresses = _by_index(addrs)
    result = [
        InterfaceStatus(
            name=str(link.get("IFLA_IFNAME")),
            mac=_mac(link),
            addresses=sorted(addresses.get(link["index"], [])),
            mtu=int(link.get("IFLA_MTU") or 0),
            state=str(link.get("IFLA_OPERSTATE") or "unknown").lower(),
            port_id=(ports or {}).get(_mac(link)),
        )
        for link in links
    ]
    return sorted(result, key=lambda iface: iface.name)


def link_counters_from_netlink(
    links: Iterable[Any], ports: Mapping[str, str] | None = None
) -> list[InterfaceCounters]:
    result = []
    for link in links:
        stats: Mapping[str, int] = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
        result.append(
            InterfaceCounters(
                name=str(link.get("IFLA_IFNAME")),
                port_id=(ports or {}).get(_mac(link)),
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

    def __init__(
        self,
        rule_counters: Callable[[], Iterable[CountedRule]],
        ports: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        """``ports``: MAC -> Neutron port id, as the applied document says."""
        self._rule_counters = rule_counters
        self._ports = ports

    def interfaces(self) -> list[InterfaceStatus]:
        with IPRoute() as ipr:
            return interfaces_from_netlink(ipr.get_links(), ipr.get_addr(), self._ports())

    def counters(self) -> Counters:
        with IPRoute() as ipr:
            links = link_counters_from_netlink(ipr.get_links(), self._ports())
        return Counters(
            interfaces=links,
            rules=[
                RuleCounter(chain=c.chain, rule=c.comment, packets=c.packets, bytes=c.bytes)
                for c in self._rule_counters()
            ],
            conntrack_entries=read_conntrack_count(),
        )


# --- drift: a fingerprint of the live state an apply produced ------------------------------

# Keys of nft's JSON that change without anyone changing the rules: rule handles move when
# a table is re-created, counters count packets.
_VOLATILE_NFT_KEYS = frozenset({"handle", "counter"})


@dataclass(frozen=True)
class LiveState:
    """What an apply leaves in the kernel and the process table, in a comparable form: equal
    exactly when the same things are live, whatever order they were read in."""

    addresses: frozenset[str]
    routes: frozenset[str]
    # (table, table_fingerprint) of each of Astara's nftables tables, in a fixed order.
    tables: tuple[tuple[str, str], ...]
    daemons: frozenset[str]
    # The writer's version of each table when it was read: what is not the live state but
    # says which fingerprints a later record can take over.
    versions: Mapping[str, int] = field(default_factory=dict, compare=False)


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {
            key: _without_volatile(item)
            for key, item in value.items()
            if key not in _VOLATILE_NFT_KEYS
        }
        if isinstance(kept.get("elem"), list):
            # A hash set may list the same elements in another order once re-created (nft
            # prints an element's keys in a fixed order, so its repr is a canonical sort key).
            kept["elem"] = sorted(kept["elem"], key=repr)
        return kept
    if isinstance(value, list):
        return [_without_volatile(item) for item in value]
    return value


def _is_link_local(ip: str) -> bool:
    # Text first: a thousand floating IPs would each be parsed only to say no.
    return ip.startswith("169.254.") or (":" in ip and ipaddress.ip_address(ip).is_link_local)


def table_fingerprint(listing: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``nft -j list table ...`` without handles and counters: equal exactly
    when the table holds the same chains, rules, sets and elements."""
    kept = [
        _without_volatile(item) for item in listing.get("nftables", []) if "metainfo" not in item
    ]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def running_daemons(state_dir: Path) -> tuple[str, ...]:
    """``<pid file>=<pid>`` of each daemon under ``state_dir`` that is alive: a daemon that
    died or was restarted by someone else changes the set."""
    found = []
    for pid_file in sorted(state_dir.rglob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if is_alive(pid):
            found.append(f"{pid_file.relative_to(state_dir)}={pid}")
    return tuple(found)


class LiveStateProbe(Protocol):
    def read(self, links: LinkMap, since: LiveState | None = None) -> LiveState:
        """The live state on the interfaces of ``links`` (MAC -> name). With ``since`` (an
        earlier read), what nobody wrote since is taken from it, the rest read again."""
        ...


class KernelLiveState:
    """Reads addresses and routes of the managed interfaces, Astara's nftables tables and the
    daemons' pid files, in the namespace it runs in.

    Listing and fingerprinting 5,000 rules takes about 150 ms; a floating-IP delta writes only
    the NAT table, which lists in a few. ``versions`` gives the writer's count of writes per
    table, so a record lists again only the tables whose count moved since the earlier read.
    """

    def __init__(
        self,
        list_json: Callable[[str], Mapping[str, Any]],
        tables: Iterable[str],
        state_dir: Path,
        versions: Callable[[], Mapping[str, int]],
    ) -> None:
        self._list_json = list_json
        self._tables = tuple(tables)
        self._state_dir = state_dir
        self._versions = versions

    def read(self, links: LinkMap, since: LiveState | None = None) -> LiveState:
        # Looked at before reading: a write while this reads makes the next read list again.
        versions = dict(self._versions())
        kept: dict[str, str] = {}
        if since is not None:
            kept = {
                table: fingerprint
                for table, fingerprint in since.tables
                if table in versions and since.versions.get(table) == versions[table]
            }
        by_index = {index: name for index, name in socket.if_nameindex()}
        managed = set(links.values())
        dump = KernelDump()
        try:
            addresses = frozenset(
                f"{by_index[a.index]} {a.ip}/{a.prefixlen}"
                for a in dump.addresses()
                if by_index.get(a.index) in managed and not _is_link_local(a.ip)
            )
            routes = frozenset(
                f"{r.dst or 'default'}/{r.dst_len} via {r.gateway} dev {by_index[r.oif]} "
                f"proto {r.proto} table {r.table}"
                for r in dump.routes(tables=(MAIN_TABLE, MANAGEMENT_TABLE))
                if r.oif is not None
                and by_index.get(r.oif) in managed
                and not (r.dst or "").startswith("fe80:")
            )
        finally:
            dump.close()
        return LiveState(
            addresses=addresses,
            routes=routes,
            tables=tuple(
                (table, kept.get(table) or table_fingerprint(self._list_json(f"table {table}")))
                for table in self._tables
            ),
            daemons=frozenset(running_daemons(self._state_dir)),
            versions=versions,
        )
