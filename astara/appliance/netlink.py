"""Links, addresses, routes and routing sysctls of the appliance, through netlink (pyroute2).

Planning is pure: the document and the link map give the desired addresses, routes and
sysctls, and ``diff`` compares them with what the kernel reports. ``LinksSubsystem`` keeps one
netlink socket and applies only the difference, so applying the same document twice sends no
change. It owns global addresses on the interfaces the document names (never IPv6 link-local
ones) and only routes marked with ``ROUTE_PROTO``; routes the kernel derives from addresses
(proto kernel) and anyone else's routes are left alone.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.wire.document import ApplianceConfig, Network

# Our mark on routes (RTA_PROTOCOL); unassigned in the kernel's rtnetlink.h list.
ROUTE_PROTO = 78
MAIN_TABLE = 254
GARP_CONCURRENCY = 32


class ManagementRouting(Protocol):
    """Keeps the management NIC's traffic out of the main table (ManagementDomain)."""

    def ensure(
        self,
        ifname: str,
        addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
        trust_last: bool = False,
    ) -> None: ...

    def close(self) -> None: ...


class LinkNotFoundError(LookupError):
    """An interface the document names by MAC is not present in the kernel."""


class Address(NamedTuple):
    # Named tuples, not dataclasses: thousands are hashed and compared per apply, in C.
    ifname: str
    ip: str
    prefixlen: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version


class Route(NamedTuple):
    destination: str
    gateway: str
    ifname: str

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.destination else socket.AF_INET


T = TypeVar("T")


@dataclass(frozen=True)
class Change(Generic[T]):
    to_add: tuple[T, ...]
    to_remove: tuple[T, ...]

    def __bool__(self) -> bool:
        return bool(self.to_add or self.to_remove)


def diff(desired: Iterable[T], actual: Iterable[T]) -> Change[T]:
    """What to add and what to remove so that ``actual`` becomes ``desired`` (sorted)."""
    want, have = set(desired), set(actual)
    return Change(to_add=tuple(sorted(want - have)), to_remove=tuple(sorted(have - want)))  # type: ignore[type-var]


def resolve_links(macs: Iterable[str], ipr: IPRoute | None = None) -> dict[str, str]:
    """MAC (lower case) -> kernel interface name; raises LinkNotFoundError naming a missing MAC."""
    own = ipr is None
    sock = IPRoute() if ipr is None else ipr
    try:
        by_mac = {
            str(link.get("IFLA_ADDRESS")).lower(): str(link.get("IFLA_IFNAME"))
            for link in sock.get_links()
        }
    finally:
        if own:
            sock.close()
    wanted = [mac.lower() for mac in macs]
    missing = [mac for mac in wanted if mac not in by_mac]
    if missing:
        raise LinkNotFoundError(f"no interface has MAC {', '.join(missing)}")
    return {mac: by_mac[mac] for mac in wanted}


def _ifname(links: LinkMap, net: Network) -> str:
    try:
        return links[net.interface_mac]
    except KeyError:
        raise LinkNotFoundError(f"no interface has MAC {net.interface_mac}") from None


def managed_interfaces(config: ApplianceConfig, links: LinkMap) -> list[str]:
    return [_ifname(links, net) for net in config.networks]


def desired_addresses(config: ApplianceConfig, links: LinkMap) -> set[Address]:
    """Router addresses of every network, plus floating and port-forward IPs as /32 outside."""
    wanted = {
        Address(_ifname(links, net), str(addr.ip), addr.network.prefixlen)
        for net in config.networks
        for addr in net.addresses
    }
    external = config.network("external")
    if external is not None:
        ext_if = _ifname(links, external)
        router_ips = {str(addr.ip) for addr in external.addresses}
        extra = [fip.floating_ip for fip in config.floating_ips]
        extra += [forward.external_ip for forward in config.port_forwards]
        # inet_ntoa: a fraction of str() on an IPv4Address, which adds up for 1,000s.
        texts = {socket.inet_ntoa(ip.packed) for ip in extra}
        wanted |= {Address(ext_if, text, 32) for text in texts - router_ips}
    return wanted


def desired_routes(config: ApplianceConfig, links: LinkMap) -> set[Route]:
    """Default routes via the external gateways (one per IP version) and the static routes."""
    wanted: set[Route] = set()
    external = config.network("external")
    if external is not None:
        ext_if = _ifname(links, external)
        for version, default in ((4, "0.0.0.0/0"), (6, "::/0")):
            gateway = next(
                (
                    s.gateway_ip
                    for s in external.subnets
                    if s.gateway_ip is not None and s.cidr.version == version
                ),
                None,
            )
            if gateway is not None:
                wanted.add(Route(default, str(gateway), ext_if))
    for route in config.routes:
        net = next(
            (
                n
                for n in config.networks
                for a in n.addresses
                if a.version == route.nexthop.version and route.nexthop in a.network
            ),
            None,
        )
        if net is not None:
            wanted.add(Route(str(route.destination), str(route.nexthop), _ifname(links, net)))
    return wanted


def desired_sysctls(config: ApplianceConfig, links: LinkMap) -> dict[str, str]:
    """Sysctls (paths under /proc/sys) a router needs; a new netns inherits none of them."""
    wanted = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"}
    for net in config.networks:
        if net.kind == "management":
            continue
        ifname = _ifname(links, net)
        # A router must not configure itself from RAs (its own, looped back, included).
        wanted[f"net/ipv6/conf/{ifname}/accept_ra"] = "0"
        # Removing a primary IPv4 address must not take the floating IPs of its subnet along.
        wanted[f"net/ipv4/conf/{ifname}/promote_secondaries"] = "1"
    return wanted


def garp_targets(
    added: Iterable[Address], config: ApplianceConfig, links: LinkMap
) -> list[Address]:
    """IPv4 addresses just added outside: neighbours' ARP caches must learn them at once."""
    external = config.network("external")
    if external is None:
        return []
    ext_if = _ifname(links, external)
    return [a for a in added if a.ifname == ext_if and a.version == 4]


def owned_address(address: Address, managed: Sequence[str]) -> bool:
    return address.ifname in managed and not ipaddress.ip_address(address.ip).is_link_local


class GratuitousArp:
    """Announces addresses with ``arping -U`` in the background (each run takes about 1 s)."""

    def __init__(self, command: Sequence[str] = ("arping",)) -> None:
        self.command = tuple(command)

    def announce(self, addresses: Sequence[Address]) -> threading.Thread | None:
        if not addresses:
            return None
        worker = threading.Thread(target=self._run, args=(list(addresses),), daemon=True)
        worker.start()
        return worker

    def _run(self, addresses: list[Address]) -> None:
        running: list[subprocess.Popen[bytes]] = []
        for address in addresses:
            if len(running) >= GARP_CONCURRENCY:
                running.pop(0).wait()
            running.append(
                subprocess.Popen(
                    [*self.command, "-U", "-c", "1", "-I", address.ifname, address.ip],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for proc in running:
            proc.wait()


# rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h).
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
IFF_UP = 1
IFLA_IFNAME, IFLA_MTU = 3, 4
NLM_F_REQUEST_DUMP = 0x301
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTM_NEWADDR, RTM_DELADDR = 20, 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
ADDRESS_BATCH = 256  # requests per send: well inside a netlink socket's default buffer
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class KernelLink:
    index: int
    name: str
    mtu: int
    up: bool


@dataclass(frozen=True)
class KernelAddress:
    index: int
    family: int
    prefixlen: int
    ip: str


@dataclass(frozen=True)
class KernelRoute:
    family: int
    dst_len: int
    table: int
    proto: int
    dst: str | None
    gateway: str | None
    oif: int | None
    kind: int = 1  # rtm_type: RTN_UNICAST, RTN_UNREACHABLE (7)...
    prefsrc: str | None = None


class KernelDump:
    """Reads links, addresses and routes over a raw rtnetlink socket.

    pyroute2 decodes about 0.16 ms per message: dumping 1,000 floating IPs through it took
    160 ms, parsing the same dump here takes 5 ms. Changes still go through pyroute2.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def links(self) -> list[KernelLink]:
        found = []
        for body, attrs in self._dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0), _IFINFOMSG):
            _, _, index, flags, _ = body
            name, mtu = attrs.get(IFLA_IFNAME), attrs.get(IFLA_MTU)
            if name is not None and mtu is not None:
                found.append(
                    KernelLink(
                        index=index,
                        name=name.rstrip(b"\0").decode(),
                        mtu=struct.unpack("=I", mtu)[0],
                        up=bool(flags & IFF_UP),
                    )
                )
        return found

    def addresses(self) -> list[KernelAddress]:
        found = []
        for body, attrs in self._dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0), _IFADDRMSG):
            family, prefixlen, _, _, index = body
            # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
            raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if raw is not None:
                found.append(KernelAddress(index, family, prefixlen, socket.inet_ntop(family, raw)))
        return found

    def routes(self, tables: Collection[int] | None = None) -> list[KernelRoute]:
        """Routes of every table, or of ``tables`` (ids below 256) only: the local table holds
        a route per address, a thousand with as many floating IPs, not worth decoding."""
        found = []
        request = _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)
        keep = None if tables is None else (lambda body: body[4] in tables)
        for body, attrs in self._dump(RTM_GETROUTE, request, _RTMSG, keep):
            family, dst_len, _, _, table, proto, _, kind, _ = body
            if RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[RTA_TABLE])[0]
            dst, gateway, oif = attrs.get(RTA_DST), attrs.get(RTA_GATEWAY), attrs.get(RTA_OIF)
            prefsrc = attrs.get(RTA_PREFSRC)
            found.append(
                KernelRoute(
                    family=family,
                    dst_len=dst_len,
                    table=table,
                    proto=proto,
                    dst=socket.inet_ntop(family, dst) if dst else None,
                    gateway=socket.inet_ntop(family, gateway) if gateway else None,
                    oif=struct.unpack("=i", oif)[0] if oif else None,
                    kind=kind,
                    prefsrc=socket.inet_ntop(family, prefsrc) if prefsrc else None,
                )
            )
        return found

    def _dump(
        self,
        msg_type: int,
        request: bytes,
        header: struct.Struct,
        keep: Callable[[tuple[int, ...]], bool] | None = None,
    ) -> Iterator[tuple[tuple[int, ...], dict[int, bytes]]]:
        """Headers and attributes of each message of a dump (those ``keep`` accepts)."""
        self._seq += 1
        seq = self._seq
        length = _NLMSGHDR.size + len(request)
        self.sock.send(_NLMSGHDR.pack(length, msg_type, NLM_F_REQUEST_DUMP, seq, 0) + request)
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                size, kind, _, msg_seq, _ = _NLMSGHDR.unpack_from(data, offset)
                start, offset = offset, offset + ((size + 3) & ~3)
                if msg_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, start + _NLMSGHDR.size)[0]
                    raise OSError(code, f"netlink dump failed: {os.strerror(code)}")
                body_at = start + _NLMSGHDR.size
                body = header.unpack_from(data, body_at)
                if keep is None or keep(body):
                    yield body, _attributes(data, body_at + header.size, start + size)


class AddressWriter:
    """Adds and deletes addresses over a raw rtnetlink socket, many requests per send.

    Through pyroute2 each address took a request and its acknowledgement in turn, ~0.3 ms:
    300 ms of a full apply with 1,000 floating IPs. Here the requests of a batch go in one
    send and their acknowledgements are read back together.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(5.0)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def change(self, command: str, addresses: Sequence[tuple[int, Address]], ignore: int) -> None:
        """``add`` or ``del`` each (interface index, address); ``ignore`` is the error number
        meaning "already so". OSError naming the first address the kernel refused."""
        for start in range(0, len(addresses), ADDRESS_BATCH):
            chunk = addresses[start : start + ADDRESS_BATCH]
            requests = {}
            data = b""
            for index, address in chunk:
                self._seq += 1
                requests[self._seq] = address
                data += _address_request(command, index, address, self._seq)
            self.sock.send(data)
            for seq, code in acknowledgements(self.sock, set(requests)):
                if code not in (0, ignore):
                    raise OSError(
                        code, f"cannot {command} address {requests[seq]}: {os.strerror(code)}"
                    )


def acknowledgements(sock: socket.socket, waiting: set[int]) -> Iterator[tuple[int, int]]:
    """(sequence, error number, 0 for success) of each request in ``waiting`` as the kernel
    acknowledges it; replies to other requests (an earlier batch's leftovers) are skipped."""
    while waiting:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            size, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
            start, offset = offset, offset + ((size + 3) & ~3)
            if kind == NLMSG_ERROR and seq in waiting:
                waiting.discard(seq)
                yield seq, -struct.unpack_from("=i", data, start + _NLMSGHDR.size)[0]


def _address_request(command: str, index: int, address: Address, seq: int) -> bytes:
    family = socket.AF_INET6 if ":" in address.ip else socket.AF_INET
    raw = socket.inet_pton(family, address.ip)
    attrs = _attribute(IFA_LOCAL, raw) + _attribute(IFA_ADDRESS, raw)
    if command == "add" and family == socket.AF_INET and address.prefixlen < 31:
        net = ipaddress.ip_network(f"{address.ip}/{address.prefixlen}", strict=False)
        attrs += _attribute(IFA_BROADCAST, net.broadcast_address.packed)
    body = _IFADDRMSG.pack(family, address.prefixlen, 0, 0, index) + attrs
    kind, flags = (
        (RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        if command == "add"
        else (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)
    )
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _attribute(kind: int, value: bytes) -> bytes:
    size = _RTATTR.size + len(value)
    return _RTATTR.pack(size, kind) + value + b"\0" * (-size % 4)


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    attrs = {}
    while offset + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size:
            break
        attrs[kind] = data[offset + _RTATTR.size : offset + size]
        offset += (size + 3) & ~3
    return attrs


@dataclass(frozen=True)
class Converged:
    """What this subsystem's last successful apply of a document left in the kernel."""

    config: ApplianceConfig
    links: dict[str, str]
    addresses: frozenset[Address]
    routes: frozenset[Route]

    def covers(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> bool:
        """Whether an apply of ``desired`` over ``previous`` may diff against this record
        instead of the kernel: ``previous`` is what was applied, with the same interface
        names, and ``desired`` manages no interface it did not (whose addresses were never
        read). The kernel is trusted to be as left; ``previous=None`` re-reads it."""
        if previous is None or self.links != dict(links) or self.config != previous:
            return False
        macs = {net.interface_mac for net in previous.networks}
        return desired is None or all(net.interface_mac in macs for net in desired.networks)


class LinksSubsystem:
    """MTU and state of links, routing sysctls, addresses and our routes.

    Addresses and routes are diffed against a kernel dump, except on top of the document this
    object applied last (see Converged): with 1,000 floating IPs the dump is most of the cost
    of adding one.
    """

    name = "addresses"

    def __init__(
        self,
        ipr: IPRoute | None = None,
        garp: GratuitousArp | None = None,
        sysctl_root: Path = Path("/proc/sys"),
        management: ManagementRouting | None = None,
    ) -> None:
        """``management`` keeps the management network in its own routing domain
        (astara.appliance.management); None leaves routing of management to the main table."""
        self.ipr = ipr if ipr is not None else IPRoute()
        self.dump = KernelDump()
        self.writer = AddressWriter()
        self.management = management
        self.garp = garp if garp is not None else GratuitousArp()
        self.sysctl_root = sysctl_root
        self.last_change: tuple[Change[Address], Change[Route]] | None = None
        self._converged: Converged | None = None

    def close(self) -> None:
        self.ipr.close()
        self.dump.close()
        self.writer.close()
        if self.management is not None:
            self.management.close()

    def apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        try:
            self._apply(desired, previous, links)
        except (NetlinkError, OSError, LinkNotFoundError) as exc:
            raise ApplyStepError(self.name, str(exc)) from exc

    def _apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        converged, self._converged = self._converged, None
        kernel = self._links()
        if desired is not None:
            self._set_sysctls(desired_sysctls(desired, links))
            self._set_links(desired, links, kernel)
            want_addrs, want_routes = (
                desired_addresses(desired, links),
                desired_routes(desired, links),
            )
        else:
            want_addrs, want_routes = self._kept_on_removal(previous, links), set()
        fast = converged is not None and converged.covers(desired, previous, links)
        if fast and converged is not None:
            # An interface unplugged since then took its addresses and routes along.
            have_addrs = [a for a in converged.addresses if a.ifname in kernel]
            have_routes = [r for r in converged.routes if r.ifname in kernel]
        else:
            managed = self._managed(desired, previous, links, kernel)
            by_index = {link.index: name for name, link in kernel.items()}
            have_addrs = [a for a in self._addresses(by_index) if owned_address(a, managed)]
            have_routes = self._routes(by_index)
        addrs = diff(want_addrs, have_addrs)
        for command, changed, ignore in (
            ("del", addrs.to_remove, errno.EADDRNOTAVAIL),
            ("add", addrs.to_add, errno.EEXIST),
        ):
            self.writer.change(command, [(kernel[a.ifname].index, a) for a in changed], ignore)
        routes = diff(want_routes, have_routes)
        for route in routes.to_remove:
            self._route("del", route, kernel, ignore=errno.ESRCH)
        for route in routes.to_add:
            self._route("add", route, kernel, ignore=errno.EEXIST)
        management = desired.network("management") if desired is not None else None
        if management is not None and self.management is not None:
            # After the addresses: the domain's routes name them as sources.
            self.management.ensure(
                _ifname(links, management),
                list(management.addresses),
                trust_last=fast,
            )
        if desired is not None:
            self.garp.announce(garp_targets(addrs.to_add, desired, links))
            self._converged = Converged(
                desired, dict(links), frozenset(want_addrs), frozenset(want_routes)
            )
        self.last_change = (addrs, routes)

    def _managed(
        self,
        desired: ApplianceConfig | None,
        previous: ApplianceConfig | None,
        links: LinkMap,
        kernel: Mapping[str, KernelLink],
    ) -> list[str]:
        names: list[str] = []
        for config in (desired, previous):
            if config is not None:
                names += [
                    links[n.interface_mac] for n in config.networks if n.interface_mac in links
                ]
        return [name for name in names if name in kernel]

    @staticmethod
    def _kept_on_removal(previous: ApplianceConfig | None, links: LinkMap) -> set[Address]:
        # The management address is how the orchestrator reaches us: it outlives the document.
        if previous is None:
            return set()
        management = previous.network("management")
        if management is None or management.interface_mac not in links:
            return set()
        ifname = links[management.interface_mac]
        return {Address(ifname, str(a.ip), a.network.prefixlen) for a in management.addresses}

    def _links(self) -> dict[str, KernelLink]:
        return {link.name: link for link in self.dump.links()}

    def _set_links(
        self, config: ApplianceConfig, links: LinkMap, kernel: Mapping[str, KernelLink]
    ) -> None:
        for iface in config.interfaces:
            name = links.get(iface.mac)
            if name is None or name not in kernel:
                raise LinkNotFoundError(f"no interface has MAC {iface.mac}")
            link = kernel[name]
            if link.mtu != iface.mtu:
                self.ipr.link("set", index=link.index, mtu=iface.mtu)
            if not link.up:
                self.ipr.link("set", index=link.index, state="up")

    def _set_sysctls(self, wanted: Mapping[str, str]) -> None:
        for path, value in wanted.items():
            target = self.sysctl_root / path
            if target.read_text().strip() != value:
                target.write_text(value)

    def _addresses(self, by_index: Mapping[int, str]) -> list[Address]:
        return [
            Address(by_index[a.index], _norm_ip(a.ip), a.prefixlen)
            for a in self.dump.addresses()
            if a.index in by_index
        ]

    def _routes(self, by_index: Mapping[int, str]) -> list[Route]:
        found = []
        for route in self.dump.routes():
            ifname = by_index.get(route.oif) if route.oif is not None else None
            if route.proto != ROUTE_PROTO or route.table != MAIN_TABLE or ifname is None:
                continue
            if route.gateway is None:
                continue
            default = "0.0.0.0" if route.family == socket.AF_INET else "::"
            destination = ipaddress.ip_network(f"{route.dst or default}/{route.dst_len}")
            found.append(Route(str(destination), _norm_ip(route.gateway), ifname))
        return found

    def _route(
        self, command: str, route: Route, kernel: Mapping[str, KernelLink], ignore: int
    ) -> None:
        destination = ipaddress.ip_network(route.destination)
        args: dict[str, Any] = {
            "family": route.family,
            "dst_len": destination.prefixlen,
            "gateway": route.gateway,
            "oif": kernel[route.ifname].index,
            "proto": ROUTE_PROTO,
            "table": MAIN_TABLE,
        }
        if destination.prefixlen:
            args["dst"] = str(destination.network_address)
        _tolerant(lambda: self.ipr.route(command, **args), ignore)


def _norm_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _tolerant(call: Any, ignore: int) -> None:
    """Run a netlink request; the one errno meaning 'already so' is not an error."""
    try:
        call()
    except NetlinkError as exc:
        if exc.code != ignore:
            raise
