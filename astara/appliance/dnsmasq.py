"""DHCP and DNS for internal networks: one dnsmasq per network, bound to its interface.

Rendering is pure: a network and its interface name give the command line, the hosts file
(``mac,ip[,[v6]],hostname``, static leases only) and the options file. ``DnsmasqSubsystem``
writes the files atomically and reloads with SIGHUP when only they change (dnsmasq re-reads
both, same PID, no lease lost); it restarts when the command line changes, and when the files
change while a host is tagged with options of its own (dnsmasq 2.90 crashes re-reading those;
the lease file keeps the leases across the restart).

DNS: each dnsmasq is its network's resolver (DHCP hands out the router's address). It answers
for the names of the network's hosts, under the network's domain, forward and reverse, from a
names file (every port at once, leased or not, as Neutron's DHCP agent does); it forwards any
other name to the resolvers the network's subnets list (``dns_nameservers``) or, when they list
none, to the operator's upstream list; with neither, it forwards nothing. It never reads the
appliance's own resolv.conf, and never forwards a name without a dot or a reverse lookup of a
private address it does not own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from astara.appliance.files import (
    PRIVATE_DIR,
    account_uid,
    ensure_dir,
    make_private,
    write_private,
)
from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.appliance.supervisor import Daemon
from astara.wire.document import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MTU,
    Allocation,
    ApplianceConfig,
    DhcpOption,
    IpAddress,
    Network,
    Subnet,
)

# dnsmasq drops root after start-up and re-reads its hosts and options files as this account
# on SIGHUP: they are its own (0600 in a 0700 directory), out of every other user's reach.
DEFAULT_USER = "dnsmasq"
DHCPV6_MODES = ("dhcpv6-stateful", "dhcpv6-stateless")


@dataclass(frozen=True)
class DnsmasqPaths:
    """Per-network files, so instances never share a pid, lease or log file."""

    state_dir: Path
    network_id: str

    def _file(self, suffix: str) -> Path:
        return self.state_dir / f"dnsmasq-{self.network_id}.{suffix}"

    @property
    def pid(self) -> Path:
        return self._file("pid")

    @property
    def leases(self) -> Path:
        return self._file("leases")

    @property
    def log(self) -> Path:
        return self._file("log")

    @property
    def hosts(self) -> Path:
        return self._file("hosts")

    @property
    def opts(self) -> Path:
        return self._file("opts")

    @property
    def names(self) -> Path:
        return self._file("names")


@dataclass(frozen=True)
class DnsmasqInstance:
    network_id: str
    argv: tuple[str, ...]
    hosts: str
    opts: str
    names: str


def serves_dhcp(subnet: Subnet) -> bool:
    """IPv4 subnets and DHCPv6 ones; SLAAC-only subnets get their addresses from RAs."""
    if not subnet.dhcp_enabled:
        return False
    return subnet.cidr.version == 4 or subnet.ipv6_address_mode in DHCPV6_MODES


def dhcp_subnets(network: Network) -> list[tuple[str, Subnet]]:
    """Subnets that get a DHCP range, each with the tag its options are scoped by."""
    return [(f"s{i}", s) for i, s in enumerate(network.subnets) if serves_dhcp(s)]


def resolvers(
    network: Network, upstreams: Iterable[IpAddress], own: Iterable[IpAddress] = ()
) -> list[str]:
    """Where the network's dnsmasq forwards names it does not own: its subnets' resolvers,
    else the operator's upstreams. Never one of the router's own addresses (two networks
    naming each other's router address would forward in a loop) nor one that cannot be a
    resolver elsewhere (loopback, link-local, multicast, unspecified)."""
    listed = [ip for subnet in network.subnets for ip in subnet.dns_nameservers]
    mine = {*own, *(address.ip for address in network.addresses)}
    found: list[str] = []
    for ip in listed or list(upstreams):
        usable = not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)
        if usable and ip not in mine and str(ip) not in found:
            found.append(str(ip))
    return found


def render_argv(
    network: Network,
    ifname: str,
    paths: DnsmasqPaths,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    user: str = DEFAULT_USER,
    servers: Iterable[str] = (),
) -> tuple[str, ...]:
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        f"--user={user}",
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        "--bind-interfaces",
        f"--interface={ifname}",
        "--except-interface=lo",
        "--dhcp-authoritative",
        f"--pid-file={paths.pid}",
        f"--dhcp-leasefile={paths.leases}",
        # To stderr, which is our 0600 log file: dnsmasq would make a file of its own 0660.
        "--log-facility=-",
        "--log-dhcp",
        f"--dhcp-hostsfile={paths.hosts}",
        f"--dhcp-optsfile={paths.opts}",
        f"--addn-hosts={paths.names}",
        # Plain names and reverse lookups of private addresses stay here (NXDOMAIN).
        "--domain-needed",
        "--bogus-priv",
    ]
    if network.dns_domain:
        # The domain is the network's own: an unknown name in it is NXDOMAIN, not forwarded.
        argv += [f"--domain={network.dns_domain}", f"--local=/{network.dns_domain}/"]
    argv += [f"--server={server}" for server in servers]
    for tag, subnet in dhcp_subnets(network):
        net = subnet.cidr
        size = str(net.netmask) if net.version == 4 else str(net.prefixlen)
        # static: only hosts listed in the hosts file get an address, like Neutron's ports.
        argv.append(f"--dhcp-range=set:{tag},{net.network_address},static,{size},{lease_seconds}s")
    return tuple(argv)


def _dnsmasq_name(hostname: str) -> str:
    # dnsmasq refuses a dotted name that is not under its --domain; keep the host label.
    return hostname.split(".", 1)[0]


def _hands_out_addresses(subnet: Subnet) -> bool:
    return serves_dhcp(subnet) and subnet.ipv6_address_mode != "dhcpv6-stateless"


def _port_tag(index: int) -> str:
    # By position, not port id: an id may hold characters dnsmasq reads as separators.
    return f"port{index}"


def render_hosts(network: Network) -> str:
    """One line per allocation with the addresses DHCP hands out for it (and the tag of its
    extra options, when it has any)."""
    nets = [s.cidr for s in network.subnets if _hands_out_addresses(s)]
    lines = []
    for index, alloc in enumerate(network.allocations):
        ips = [ip for ip in alloc.ips if any(ip.version == n.version and ip in n for n in nets)]
        if ips:
            fields = [alloc.mac]
            if alloc.dhcp_options:
                fields.append(f"set:{_port_tag(index)}")
            # v6 addresses in brackets, or dnsmasq reads them as hardware addresses.
            fields += [str(ip) if ip.version == 4 else f"[{ip}]" for ip in ips]
            lines.append(",".join([*fields, _dnsmasq_name(alloc.hostname)]))
    return "".join(f"{line}\n" for line in lines)


def tags_hosts(hosts: str) -> bool:
    """Whether a hosts file tags a host (a port with options of its own). dnsmasq 2.90 cannot
    re-read such a file: on SIGHUP, once a tagged host holds a lease, it dies of a segfault
    (reproduced with Debian 12's 2.90), so a change to it means a restart, not a reload."""
    return ",set:" in hosts


def _port_opts(index: int, alloc: Allocation) -> Iterator[str]:
    for option in alloc.dhcp_options:
        yield f"tag:{_port_tag(index)},{_option_key(option)},{option.value}"


def _option_key(option: DhcpOption) -> str:
    if option.ip_version == 6:
        return f"option6:{option.name}"
    return option.name if option.name.isdigit() else f"option:{option.name}"


def render_names(network: Network) -> str:
    """The names file: ``address fqdn name`` for every address of every port (dnsmasq
    answers both directions from it)."""
    lines = []
    for alloc in network.allocations:
        name = _dnsmasq_name(alloc.hostname)
        names = f"{name}.{network.dns_domain} {name}" if network.dns_domain else name
        lines += [f"{ip} {names}" for ip in alloc.ips]
    return "".join(f"{line}\n" for line in lines)


def _own_ip(network: Network, subnet: Subnet) -> str | None:
    return next((str(a.ip) for a in network.addresses if a.ip in subnet.cidr), None)


def _router_ip(network: Network, subnet: Subnet) -> str | None:
    if subnet.gateway_ip is not None:
        return str(subnet.gateway_ip)
    return _own_ip(network, subnet)


def _subnet_opts(network: Network, tag: str, subnet: Subnet, mtu: int) -> Iterator[str]:
    resolver = _own_ip(network, subnet)  # the router resolves (and forwards) for the network
    if subnet.cidr.version == 6:
        if resolver:
            yield f"tag:{tag},option6:dns-server,[{resolver}]"
        if network.dns_domain:  # DHCPv4 clients get it from --domain (option 15)
            yield f"tag:{tag},option6:domain-search,{network.dns_domain}"
        return
    router = _router_ip(network, subnet) if subnet.gateway_ip is not None else None
    # An empty router option stops dnsmasq from offering itself on gateway-less subnets.
    yield f"tag:{tag},option:router" + (f",{router}" if router else "")
    # Option 26: a VM on a network narrower than Ethernet (an overlay) must not send 1500.
    yield f"tag:{tag},option:mtu,{mtu}"
    if resolver:
        yield f"tag:{tag},option:dns-server,{resolver}"
    routes = [(str(r.destination), str(r.nexthop)) for r in subnet.host_routes]
    if routes:
        # RFC 3442: clients that take option 121 ignore the router option, so repeat it.
        if router and not any(dest == "0.0.0.0/0" for dest, _ in routes):
            routes.append(("0.0.0.0/0", router))
        yield f"tag:{tag},option:classless-static-route," + ",".join(
            f"{dest},{hop}" for dest, hop in routes
        )


def render_opts(network: Network, mtu: int = DEFAULT_MTU) -> str:
    """Options per subnet, then each port's own (dnsmasq lets a port's tag win)."""
    lines = [
        line for tag, s in dhcp_subnets(network) for line in _subnet_opts(network, tag, s, mtu)
    ]
    lines += [
        line for index, alloc in enumerate(network.allocations) for line in _port_opts(index, alloc)
    ]
    return "".join(f"{line}\n" for line in lines)


def render(
    network: Network,
    ifname: str,
    state_dir: Path,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    user: str = DEFAULT_USER,
    mtu: int = DEFAULT_MTU,
    servers: Iterable[str] = (),
) -> DnsmasqInstance | None:
    """Everything one network's dnsmasq needs, or None when the network serves no DHCP."""
    if not dhcp_subnets(network):
        return None
    paths = DnsmasqPaths(state_dir, network.id)
    return DnsmasqInstance(
        network_id=network.id,
        argv=render_argv(network, ifname, paths, lease_seconds, user, servers),
        hosts=render_hosts(network),
        opts=render_opts(network, mtu),
        names=render_names(network),
    )


def desired_instances(
    config: ApplianceConfig | None, links: LinkMap, state_dir: Path, user: str = DEFAULT_USER
) -> dict[str, DnsmasqInstance]:
    if config is None:
        return {}
    found = {}
    own = [address.ip for net in config.networks for address in net.addresses]
    for net in config.internal_networks():
        ifname, mtu = links[net.interface_mac], config.mtu(net.interface_mac)
        servers = resolvers(net, config.dns_upstreams, own)
        lease = config.dhcp_lease_seconds
        instance = render(net, ifname, state_dir, lease, user, mtu, servers)
        if instance is not None:
            found[net.id] = instance
    return found


class DnsmasqSubsystem:
    name = "dhcp"

    def __init__(self, state_dir: Path, user: str = DEFAULT_USER) -> None:
        self.state_dir = state_dir
        self.user = user
        self._daemons: dict[str, Daemon] = {}

    def daemon(self, network_id: str) -> Daemon:
        if network_id not in self._daemons:
            paths = DnsmasqPaths(self.state_dir, network_id)
            self._daemons[network_id] = Daemon(paths.pid, paths.log)
        return self._daemons[network_id]

    def apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        try:
            self._apply(desired, links)
        except (OSError, LookupError, ValueError) as exc:
            raise ApplyStepError(self.name, str(exc)) from exc

    def _apply(self, desired: ApplianceConfig | None, links: LinkMap) -> None:
        uid = account_uid(self.user)
        ensure_dir(self.state_dir, PRIVATE_DIR, uid)
        wanted = desired_instances(desired, links, self.state_dir, self.user)
        for network_id in self._running_ids() - wanted.keys():
            self.daemon(network_id).stop()
            paths = DnsmasqPaths(self.state_dir, network_id)
            for stale in (paths.hosts, paths.opts, paths.names, paths.leases):
                stale.unlink(missing_ok=True)
        for network_id, instance in wanted.items():
            paths = DnsmasqPaths(self.state_dir, network_id)
            loaded = paths.hosts.read_text() if paths.hosts.exists() else ""
            changed = write_private(paths.hosts, instance.hosts, uid)
            changed = write_private(paths.opts, instance.opts, uid) or changed
            changed = write_private(paths.names, instance.names, uid) or changed
            make_private(paths.leases)  # opened by dnsmasq before it drops root
            daemon = self.daemon(network_id)
            if changed and (tags_hosts(loaded) or tags_hosts(instance.hosts)):
                daemon.stop()  # restarted below, with its leases from the lease file
            if not daemon.ensure(instance.argv) and changed:
                daemon.signal(signal.SIGHUP)

    def _running_ids(self) -> set[str]:
        # The state dir, not memory, says what runs: an agent restart must still stop them.
        ids = {p.name[len("dnsmasq-") : -len(".pid")] for p in self.state_dir.glob("dnsmasq-*.pid")}
        ids |= {nid for nid, daemon in self._daemons.items() if daemon.pid() is not None}
        return ids
