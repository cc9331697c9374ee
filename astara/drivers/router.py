"""The router driver: one Neutron router's data in, the appliance configuration document out.

``RouterSnapshot`` holds everything Neutron says about a router (parsed from the API's own JSON
shapes), ``render`` turns it into an ``ApplianceConfig`` without any I/O, and
``NeutronRouterSource`` is the thin edge that reads a snapshot from Neutron.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError

from astara.drivers.firewall import (
    NeutronFirewallGroup,
    NeutronFirewallPolicy,
    NeutronFirewallRule,
    RenderedGroups,
    firewall_groups,
)
from astara.drivers.metadata import MetadataService, instance_identity
from astara.drivers.neutron_model import NeutronModel
from astara.wire.document import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MTU,
    MAX_MTU,
    MIN_MTU,
    Allocation,
    ApplianceConfig,
    Bgp,
    BgpPeer,
    DhcpOption,
    Firewall,
    FloatingIP,
    HostRoute,
    Interface,
    Metadata,
    Network,
    NetworkKind,
    PortForward,
    PortRange,
    StaticRoute,
    Subnet,
    is_hostname,
    management_overlap,
    route_into_management,
)

LOG = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

GATEWAY_OWNER = "network:router_gateway"
# How long the router source trusts its answer to "does Neutron serve this API extension".
EXTENSION_TTL = 60.0
# Every owner Neutron gives a port that belongs to a router rather than to a workload.
ROUTER_OWNERS = frozenset(
    {
        "network:router_interface",
        "network:router_interface_distributed",
        "network:ha_router_replicated_interface",
        "network:router_centralized_snat",
        GATEWAY_OWNER,
    }
)


class FixedIP(NeutronModel):
    subnet_id: str
    ip_address: IPAddress


class NeutronRoute(NeutronModel):
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    nexthop: IPAddress


class GatewayInfo(NeutronModel):
    network_id: str
    enable_snat: bool = True
    external_fixed_ips: list[FixedIP] = Field(default_factory=list)


class NeutronRouter(NeutronModel):
    id: str
    project_id: str = ""
    name: str = ""
    external_gateway_info: GatewayInfo | None = None
    routes: list[NeutronRoute] = Field(default_factory=list)


class NeutronDhcpOption(NeutronModel):
    opt_name: str
    opt_value: str | None = None
    ip_version: int = 4


class NeutronPort(NeutronModel):
    id: str
    network_id: str
    mac_address: str
    fixed_ips: list[FixedIP] = Field(default_factory=list)
    device_owner: str = ""
    device_id: str = ""
    project_id: str = ""
    dns_name: str = ""
    extra_dhcp_opts: list[NeutronDhcpOption] = Field(default_factory=list)


class NeutronSubnet(NeutronModel):
    id: str
    network_id: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway_ip: IPAddress | None = None
    enable_dhcp: bool = True
    dns_nameservers: list[IPAddress] = Field(default_factory=list)
    host_routes: list[NeutronRoute] = Field(default_factory=list)
    ipv6_ra_mode: str | None = None
    ipv6_address_mode: str | None = None


class NeutronNetwork(NeutronModel):
    id: str
    mtu: int | None = None
    dns_domain: str = ""  # with Neutron's DNS integration (the ML2 "dns" extension driver)
    external: bool = Field(False, alias="router:external")


class NeutronFloatingIP(NeutronModel):
    id: str
    floating_ip_address: IPAddress
    fixed_ip_address: IPAddress | None = None
    router_id: str | None = None
    port_id: str | None = None


class NeutronPortForwarding(NeutronModel):
    """A port forwarding; a single port or a "first:last" range on each side."""

    id: str
    floatingip_id: str
    protocol: str
    internal_ip_address: ipaddress.IPv4Address
    internal_port: int | None = None
    external_port: int | None = None
    internal_port_range: str | None = None
    external_port_range: str | None = None


class NeutronBgpSpeaker(NeutronModel):
    """neutron-dynamic-routing's BGP speaker (only those on the router's gateway network)."""

    id: str
    local_as: int
    ip_version: int = 4
    peers: list[str] = Field(default_factory=list)
    networks: list[str] = Field(default_factory=list)
    advertise_tenant_networks: bool = True
    advertise_floating_ip_host_routes: bool = True


class NeutronBgpPeer(NeutronModel):
    id: str
    peer_ip: IPAddress
    remote_as: int
    auth_type: str = "none"


class RouterSnapshot(NeutronModel):
    """One consistent read of a router and everything its appliance serves."""

    router: NeutronRouter
    interface_ports: list[NeutronPort] = Field(default_factory=list)
    gateway_port: NeutronPort | None = None
    subnets: list[NeutronSubnet] = Field(default_factory=list)
    networks: list[NeutronNetwork] = Field(default_factory=list)
    # All ports on the router's internal networks (the router's own included: render skips them).
    network_ports: list[NeutronPort] = Field(default_factory=list)
    floating_ips: list[NeutronFloatingIP] = Field(default_factory=list)
    port_forwardings: list[NeutronPortForwarding] = Field(default_factory=list)
    bgp_speakers: list[NeutronBgpSpeaker] = Field(default_factory=list)
    bgp_peers: list[NeutronBgpPeer] = Field(default_factory=list)
    # neutron-fwaas: the groups on the router's interfaces, their policies and rules.
    firewall_groups: list[NeutronFirewallGroup] = Field(default_factory=list)
    firewall_policies: list[NeutronFirewallPolicy] = Field(default_factory=list)
    firewall_rules: list[NeutronFirewallRule] = Field(default_factory=list)


@dataclass(frozen=True)
class ServiceSettings:
    """The operator's DHCP and DNS choices for every router ([dhcp] and [dns] options)."""

    # Where appliances forward names when a network's subnets list no resolvers.
    dns_upstreams: tuple[IPAddress, ...] = ()
    # The domain of networks without a dns_domain of their own (None: names without one).
    dns_domain: str | None = None
    dhcp_lease_seconds: int = DEFAULT_LEASE_SECONDS


DEFAULT_SERVICES = ServiceSettings()  # frozen: one shared default


@dataclass(frozen=True)
class ManagementPort:
    """The appliance's NIC on the management network (made by the instance provider)."""

    network_id: str
    mac: str
    addresses: tuple[IPInterface, ...]
    # The management network's MTU: a VM's virtio NIC refuses an MTU above its host's.
    mtu: int | None = None


def snapshot_from_api(
    router: dict[str, Any],
    router_ports: list[dict[str, Any]],
    subnets: list[dict[str, Any]],
    networks: list[dict[str, Any]],
    network_ports: list[dict[str, Any]],
    floating_ips: list[dict[str, Any]],
    port_forwardings: list[dict[str, Any]],
    bgp_speakers: list[dict[str, Any]] | None = None,
    bgp_peers: list[dict[str, Any]] | None = None,
    firewall: tuple[list[dict[str, Any]], ...] = ([], [], []),
) -> RouterSnapshot:
    """A snapshot from Neutron's API answers (``router_ports``: the ports whose device is it)."""
    return RouterSnapshot.model_validate(
        {
            "router": router,
            "interface_ports": [
                p for p in router_ports if p["device_owner"] in ROUTER_OWNERS - {GATEWAY_OWNER}
            ],
            "gateway_port": next(
                (p for p in router_ports if p["device_owner"] == GATEWAY_OWNER), None
            ),
            "subnets": subnets,
            "networks": networks,
            "network_ports": network_ports,
            "floating_ips": floating_ips,
            "port_forwardings": port_forwardings,
            "bgp_speakers": bgp_speakers or [],
            "bgp_peers": bgp_peers or [],
            "firewall_groups": firewall[0],
            "firewall_policies": firewall[1],
            "firewall_rules": firewall[2],
        }
    )


def render(
    snapshot: RouterSnapshot,
    generation: int,
    management: ManagementPort,
    metadata: MetadataService | None = None,
    nic_macs: Mapping[str, str] | None = None,
    services: ServiceSettings = DEFAULT_SERVICES,
) -> ApplianceConfig:
    """The appliance document for a router: pure, deterministic for the same snapshot.

    With a metadata service, the ports of Nova instances carry their signed identity.
    ``nic_macs`` maps a router port id to the MAC of the appliance NIC serving it when that
    is not the port's own MAC (the Nova provider wires each router port through a service
    port of its own).
    """
    macs = dict(nic_macs or {})
    router = snapshot.router
    # Tenant data that overlaps the management network is left out (and logged): the
    # appliance would refuse the whole document for it.
    reserved = [address.network for address in management.addresses]
    subnets = {
        subnet.id: subnet.model_copy(
            update={
                "host_routes": [
                    r for r in subnet.host_routes if _route_allowed(router.id, r, reserved)
                ]
            }
        )
        for subnet in snapshot.subnets
        if _clear_of_management(router.id, subnet, reserved)
    }
    mtus = {net.id: net.mtu for net in snapshot.networks}
    domains = {net.id: _domain(router.id, net, services) for net in snapshot.networks}
    nics = plugged_ports(snapshot)

    networks = [
        Network(
            id=management.network_id,
            kind="management",
            interface_mac=management.mac,
            addresses=list(management.addresses),
        )
    ]
    gateway = snapshot.gateway_port
    external = (
        _network(router.id, "external", gateway, macs, [gateway], subnets, [], None)
        if gateway is not None and gateway.fixed_ips
        else None
    )
    if external is not None:
        networks.append(external)
    for nic in nics:
        if nic is gateway:
            continue
        owned = [port for port in snapshot.interface_ports if port.network_id == nic.network_id]
        internal = _network(
            router.id, "internal", nic, macs, owned, subnets, snapshot.network_ports, metadata
        )
        if internal is not None:
            domain = domains.get(nic.network_id, services.dns_domain)
            networks.append(internal.model_copy(update={"dns_domain": domain}))

    interfaces = [Interface(mac=management.mac, mtu=_mtu(management.mtu))] + [
        Interface(
            mac=macs.get(port.id, port.mac_address),
            mtu=_mtu(mtus.get(port.network_id)),
            port_id=port.id,
        )
        for port in nics
    ]
    groups = _firewall_groups(snapshot, {p.network_id: macs.get(p.id, p.mac_address) for p in nics})
    for group_id, reason in groups.errors.items():
        LOG.warning(
            "router %s: firewall group %s drops every new connection: %s",
            router.id,
            group_id,
            reason,
        )
    gateway_info = router.external_gateway_info
    return ApplianceConfig(
        generation=generation,
        router_id=router.id,
        hostname=f"router-{router.id}",
        interfaces=interfaces,
        networks=networks,
        routes=[
            StaticRoute(destination=r.destination, nexthop=r.nexthop)
            for r in sorted(
                router.routes,
                key=lambda r: (r.destination.version, str(r.destination), str(r.nexthop)),
            )
            if _route_allowed(router.id, r, reserved)
        ],
        snat_enabled=gateway_info is not None and gateway_info.enable_snat,
        floating_ips=[
            fip
            for fip in _floating_ips(snapshot.floating_ips)
            if _behind_router(router.id, f"floating IP {fip.floating_ip}", fip.fixed_ip, reserved)
        ],
        port_forwards=[
            forward
            for forward in _port_forwards(snapshot)
            if _behind_router(
                router.id, f"port forwarding {forward.id}", forward.internal_ip, reserved
            )
        ],
        firewall=Firewall(groups=groups.groups),
        metadata=Metadata(upstream_url=metadata.upstream_url) if metadata else None,
        dns_upstreams=list(services.dns_upstreams),
        dhcp_lease_seconds=services.dhcp_lease_seconds,
        bgp=_bgp(
            router.id, snapshot, networks, gateway_info is not None and gateway_info.enable_snat
        )
        if external is not None
        else None,
    )


def _bgp(
    router_id: str, snapshot: RouterSnapshot, networks: list[Network], snat: bool
) -> Bgp | None:
    """What the router announces for the BGP speaker on its gateway network, if any.

    IPv6 tenant subnets are announced (they are routed, not translated); IPv4 ones only when
    the router does no source NAT; floating IPs as /32 when the speaker asks for them. Peers
    with MD5 authentication are left out: Neutron's API never shows their password.
    """
    speakers = sorted(snapshot.bgp_speakers, key=lambda s: s.id)
    if not speakers:
        return None
    speaker = speakers[0]
    if len(speakers) > 1:
        LOG.warning(
            "router %s: several BGP speakers on its gateway network; serving %s",
            router_id,
            speaker.id,
        )
    peers = []
    for peer in sorted(snapshot.bgp_peers, key=lambda p: p.id):
        if peer.id not in speaker.peers or peer.peer_ip.version != speaker.ip_version:
            continue
        if peer.auth_type != "none":
            LOG.warning(
                "router %s: BGP peer %s uses %s authentication, whose password Neutron does "
                "not show: not peered",
                router_id,
                peer.id,
                peer.auth_type,
            )
            continue
        peers.append(BgpPeer(address=peer.peer_ip, remote_as=peer.remote_as))
    if not peers:
        return None
    prefixes: list[IPNetwork] = []
    if speaker.advertise_tenant_networks and (speaker.ip_version == 6 or not snat):
        prefixes += [
            subnet.cidr
            for net in networks
            if net.kind == "internal"
            for subnet in net.subnets
            if subnet.cidr.version == speaker.ip_version
        ]
    if speaker.advertise_floating_ip_host_routes and speaker.ip_version == 4:
        prefixes += [
            ipaddress.ip_network(f"{fip.floating_ip_address}/32")
            for fip in snapshot.floating_ips
            if fip.fixed_ip_address is not None and fip.floating_ip_address.version == 4
        ]
    ordered = sorted(set(prefixes), key=lambda net: (net.version, net))
    return Bgp(local_as=speaker.local_as, peers=peers, prefixes=ordered)


def _domain(router_id: str, network: NeutronNetwork, services: ServiceSettings) -> str | None:
    if not network.dns_domain:
        return services.dns_domain
    domain = served_name(network.dns_domain)
    if domain is None:
        LOG.warning(
            "router %s: network %s: dns_domain %r cannot be served; serving %s instead",
            router_id,
            network.id,
            network.dns_domain,
            services.dns_domain,
        )
    return domain or services.dns_domain


def _firewall_groups(snapshot: RouterSnapshot, nic_macs: Mapping[str, str]) -> RenderedGroups:
    """The groups on the router's interface ports (fwaas puts none on a gateway port).

    ``nic_macs``: network id -> the MAC of the appliance's NIC on it. A router with two
    interface ports on one network (two of its subnets) serves both through one NIC, so a
    group on either port judges that NIC's traffic."""
    interfaces = {
        port.id: nic_macs[port.network_id]
        for port in snapshot.interface_ports
        if port.network_id in nic_macs
    }
    return firewall_groups(
        snapshot.firewall_groups, snapshot.firewall_policies, snapshot.firewall_rules, interfaces
    )


def firewall_group_statuses(snapshot: RouterSnapshot) -> dict[str, str]:
    """What the router's document makes of each firewall group on its interfaces."""
    plugged = {port.network_id: port.mac_address for port in plugged_ports(snapshot)}
    return _firewall_groups(snapshot, plugged).statuses


def plugged_ports(snapshot: RouterSnapshot) -> list[NeutronPort]:
    """The router ports that become appliance NICs: the gateway, then one per internal network.

    Neutron gives a router separate ports for IPv4 and IPv6 subnets of one network; the
    appliance gets a single NIC there (the first such port by id) carrying all their addresses,
    so instance providers plug exactly these ports.
    """
    first: dict[str, NeutronPort] = {}
    for port in sorted(snapshot.interface_ports, key=lambda p: p.id):
        first.setdefault(port.network_id, port)
    internal = sorted(first.values(), key=lambda p: (p.network_id, p.id))
    gateway = snapshot.gateway_port
    return ([gateway] if gateway is not None and gateway.fixed_ips else []) + internal


def hostname_for(ips: Iterable[IPAddress]) -> str:
    """Neutron's default DNS name for a port: host-10-0-0-5 (IPv4 preferred, then IPv6)."""
    first = min(ips, key=lambda ip: (ip.version, ip))
    return "host-" + str(first).replace(".", "-").replace(":", "-")


def _clear_of_management(router_id: str, subnet: NeutronSubnet, reserved: list[IPNetwork]) -> bool:
    found = management_overlap(subnet.cidr, reserved)
    if found is not None:
        LOG.warning(
            "router %s: subnet %s (%s) skipped: overlaps the management network %s",
            router_id,
            subnet.id,
            subnet.cidr,
            found,
        )
    return found is None


def _behind_router(router_id: str, what: str, inside: IPAddress, reserved: list[IPNetwork]) -> bool:
    """False (logged) for a NAT to an address of the management network: its subnet is
    left out."""
    found = next((m for m in reserved if inside.version == m.version and inside in m), None)
    if found is not None:
        LOG.warning(
            "router %s: %s skipped: %s is on the management network %s",
            router_id,
            what,
            inside,
            found,
        )
    return found is None


def _route_allowed(router_id: str, route: NeutronRoute, reserved: list[IPNetwork]) -> bool:
    refused = route_into_management(route.destination, route.nexthop, reserved)
    if refused is not None:
        LOG.warning(
            "router %s: route %s via %s skipped: %s %s",
            router_id,
            route.destination,
            route.nexthop,
            refused[0],
            refused[1],
        )
    return refused is None


def _network(
    router_id: str,
    kind: NetworkKind,
    nic: NeutronPort,
    nic_macs: Mapping[str, str],
    owned: list[NeutronPort],
    subnets: dict[str, NeutronSubnet],
    network_ports: list[NeutronPort],
    metadata: MetadataService | None,
) -> Network | None:
    """The network a NIC serves; None when none of its subnets is left to serve."""
    fixed = sorted(
        (fip for port in owned for fip in port.fixed_ips if fip.subnet_id in subnets),
        key=lambda fip: (fip.ip_address.version, fip.ip_address),
    )
    if not fixed:
        return None
    served = _unique(subnets[fip.subnet_id] for fip in fixed)
    return Network(
        id=nic.network_id,
        kind=kind,
        interface_mac=nic_macs.get(nic.id, nic.mac_address),
        addresses=[
            ipaddress.ip_interface(f"{fip.ip_address}/{subnets[fip.subnet_id].cidr.prefixlen}")
            for fip in fixed
        ],
        subnets=[_subnet(subnet) for subnet in served],
        allocations=list(_allocations(router_id, nic.network_id, served, network_ports, metadata))
        if kind == "internal"
        else [],
    )


def _subnet(subnet: NeutronSubnet) -> Subnet:
    return Subnet(
        id=subnet.id,
        cidr=subnet.cidr,
        gateway_ip=subnet.gateway_ip,
        dhcp_enabled=subnet.enable_dhcp,
        dns_nameservers=list(subnet.dns_nameservers),
        host_routes=[
            HostRoute(destination=r.destination, nexthop=r.nexthop) for r in subnet.host_routes
        ],
        ipv6_ra_mode=subnet.ipv6_ra_mode,
        ipv6_address_mode=subnet.ipv6_address_mode,
    )


def _allocations(
    router_id: str,
    network_id: str,
    served: list[NeutronSubnet],
    ports: list[NeutronPort],
    metadata: MetadataService | None,
) -> Iterator[Allocation]:
    served_ids = {subnet.id for subnet in served}
    for port in sorted(ports, key=lambda p: p.id):
        if port.network_id != network_id or _router_owned(port):
            continue
        ips = sorted(
            (fip.ip_address for fip in port.fixed_ips if fip.subnet_id in served_ids),
            key=lambda ip: (ip.version, ip),
        )
        if not ips:
            continue
        # One tenant's port must not stop the router serving every other port: what the
        # document cannot carry is left out, and said.
        try:
            yield Allocation(
                port_id=port.id,
                mac=port.mac_address,
                ips=ips,
                hostname=_port_hostname(router_id, port, ips),
                dhcp_options=list(_dhcp_options(router_id, port)),
                instance=instance_identity(
                    port.device_owner, port.device_id, port.project_id, metadata
                ),
            )
        except ValidationError as exc:
            LOG.warning(
                "router %s: port %s not served (DHCP, DNS, metadata): %s",
                router_id,
                port.id,
                validation_summary(exc),
            )


def _dhcp_options(router_id: str, port: NeutronPort) -> Iterator[DhcpOption]:
    """The port's extra DHCP options the appliance can serve; each other one is logged."""
    for option in port.extra_dhcp_opts:
        try:
            yield DhcpOption(
                name=option.opt_name,
                value=option.opt_value or "",
                ip_version=6 if option.ip_version == 6 else 4,
            )
        except ValidationError as exc:
            LOG.warning(
                "router %s: port %s: extra DHCP option %r not served: %s",
                router_id,
                port.id,
                option.opt_name,
                validation_summary(exc),
            )


def served_name(dns_name: str) -> str | None:
    """The name DHCP and DNS serve for a Neutron ``dns_name``; None when DNS cannot carry it.

    Neutron accepts an absolute name (trailing dot), any case and up to 255 characters; the
    appliance serves lower-case relative names of at most 253.
    """
    name = dns_name.lower().removesuffix(".")
    return name if is_hostname(name) else None


def _port_hostname(router_id: str, port: NeutronPort, ips: list[IPAddress]) -> str:
    name = served_name(port.dns_name) if port.dns_name else None
    if port.dns_name and name is None:
        LOG.warning(
            "router %s: port %s: dns_name %r cannot be served; serving %s instead",
            router_id,
            port.id,
            port.dns_name,
            hostname_for(ips),
        )
    return name or hostname_for(ips)


def validation_summary(exc: ValidationError) -> str:
    """Where and why, without the values (a tenant's data, or a signature, stays out of logs)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'document'}: {error['msg']}"
        for error in exc.errors(include_input=False)
    )


def _router_owned(port: NeutronPort) -> bool:
    # DHCP ports belong to Neutron's DHCP agent, which the appliance replaces.
    return port.device_owner in ROUTER_OWNERS or port.device_owner == "network:dhcp"


def _floating_ips(fips: list[NeutronFloatingIP]) -> Iterator[FloatingIP]:
    for fip in sorted(fips, key=lambda f: f.floating_ip_address):
        if isinstance(fip.floating_ip_address, ipaddress.IPv4Address) and isinstance(
            fip.fixed_ip_address, ipaddress.IPv4Address
        ):
            yield FloatingIP(floating_ip=fip.floating_ip_address, fixed_ip=fip.fixed_ip_address)


def _port_forwards(snapshot: RouterSnapshot) -> Iterator[PortForward]:
    addresses = {fip.id: fip.floating_ip_address for fip in snapshot.floating_ips}
    for forward in sorted(snapshot.port_forwardings, key=lambda f: f.id):
        external_ip = addresses.get(forward.floatingip_id)
        # The document carries TCP and UDP only; other protocols have no NAT rule to render.
        if not isinstance(external_ip, ipaddress.IPv4Address) or forward.protocol not in (
            "tcp",
            "udp",
        ):
            continue
        yield PortForward(
            id=forward.id,
            external_ip=external_ip,
            protocol=forward.protocol,
            external_port=_port_range(forward.external_port, forward.external_port_range),
            internal_ip=forward.internal_ip_address,
            internal_port=_port_range(forward.internal_port, forward.internal_port_range),
        )


def _port_range(single: int | None, span: str | None) -> PortRange:
    if span:
        first, _, last = span.partition(":")
        return PortRange(first=int(first), last=int(last or first))
    if single is None:
        raise ValueError("a port forwarding without a port or a port range")
    return PortRange(first=single, last=single)


def _mtu(mtu: int | None) -> int:
    return min(max(mtu or DEFAULT_MTU, MIN_MTU), MAX_MTU)


def _unique(subnets: Iterable[NeutronSubnet]) -> list[NeutronSubnet]:
    return list({subnet.id: subnet for subnet in subnets}.values())


class NeutronRouterSource:
    """Reads router snapshots from Neutron through an openstacksdk connection."""

    PORT_FORWARDING_EXTENSION = "floating-ip-port-forwarding"
    BGP_EXTENSION = "bgp"  # neutron-dynamic-routing
    FWAAS_EXTENSION = "fwaas_v2"  # neutron-fwaas

    def __init__(
        self,
        connection: Any,
        owns: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``owns``: whether a router is Astara's (with the Neutron plugin, routers of other
        providers exist beside Astara's and must be left alone); None: every router is."""
        self._network = connection.network
        self._owns = owns
        self._clock = clock
        self._extensions: dict[str, tuple[bool, float]] = {}  # alias -> (served, asked at)

    def fetch(self, router_id: str) -> RouterSnapshot | None:
        """The router as Neutron has it now, or None when it is gone or not Astara's."""
        router = self._get(f"/routers/{router_id}", "router")
        if router is None or (self._owns is not None and not self._owns(router_id)):
            return None
        own = self._list("/ports", "ports", {"device_id": router_id})
        internal_ids = sorted({p["network_id"] for p in own if p["device_owner"] != GATEWAY_OWNER})
        network_ids = sorted({p["network_id"] for p in own})
        fips = self._list("/floatingips", "floatingips", {"router_id": router_id})
        gateway = (router.get("external_gateway_info") or {}).get("network_id")
        speakers, peers = self._bgp(gateway)
        firewall = self._firewall(router.get("project_id"), {p["id"] for p in own})
        return snapshot_from_api(
            router=router,
            router_ports=own,
            subnets=self._list("/subnets", "subnets", {"network_id": network_ids}),
            networks=self._list("/networks", "networks", {"id": network_ids}),
            network_ports=self._list("/ports", "ports", {"network_id": internal_ids}),
            floating_ips=fips,
            port_forwardings=list(self._port_forwardings(fips)),
            bgp_speakers=speakers,
            bgp_peers=peers,
            firewall=firewall,
        )

    def _bgp(
        self, gateway_network: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The BGP speakers on the gateway network, and their peers."""
        if gateway_network is None or not self._has_extension(self.BGP_EXTENSION):
            return [], []
        speakers = [
            speaker
            for speaker in self._list("/bgp-speakers", "bgp_speakers", {})
            if gateway_network in speaker.get("networks", [])
        ]
        peer_ids = {peer for speaker in speakers for peer in speaker.get("peers", [])}
        if not peer_ids:
            return speakers, []
        # neutron-dynamic-routing filters peers by no attribute (400): all of them, then ours.
        peers = self._list("/bgp-peers", "bgp_peers", {})
        return speakers, [peer for peer in peers if peer["id"] in peer_ids]

    def _firewall(
        self, project_id: str | None, router_ports: set[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The firewall groups on the router's ports, their policies and rules.

        neutron-fwaas puts a group only on ports of its own project (unless an admin does), so
        the router's project's groups are read (not every project's)."""
        if not project_id or not self._has_extension(self.FWAAS_EXTENSION):
            return [], [], []
        groups = [
            group
            for group in self._list(
                "/fwaas/firewall_groups", "firewall_groups", {"project_id": project_id}
            )
            if router_ports & set(group.get("ports") or [])
        ]
        policy_ids = sorted(
            {
                group[key]
                for group in groups
                for key in ("ingress_firewall_policy_id", "egress_firewall_policy_id")
                if group.get(key)
            }
        )
        policies = self._list("/fwaas/firewall_policies", "firewall_policies", {"id": policy_ids})
        rule_ids = sorted({rule for policy in policies for rule in policy["firewall_rules"]})
        rules = self._list("/fwaas/firewall_rules", "firewall_rules", {"id": rule_ids})
        return groups, policies, rules

    def _port_forwardings(self, fips: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not fips or not self._has_extension(self.PORT_FORWARDING_EXTENSION):
            return
        for fip in fips:
            for forward in self._list(
                f"/floatingips/{fip['id']}/port_forwardings", "port_forwardings", {}
            ):
                yield {**forward, "floatingip_id": fip["id"]}

    def _has_extension(self, alias: str) -> bool:
        """Whether Neutron serves an API extension, asked at most once per EXTENSION_TTL:
        the answer changes only with neutron-server's configuration, and asking on every
        fetch cost three calls per reconcile."""
        now = self._clock()
        known = self._extensions.get(alias)
        if known is None or now - known[1] > EXTENSION_TTL:
            known = (self._get(f"/extensions/{alias}", "extension") is not None, now)
            self._extensions[alias] = known
        return known[0]

    def _get(self, path: str, key: str) -> dict[str, Any] | None:
        response = self._network.get(path)
        if response.status_code == 404:
            return None
        _raise_for_status(response, path)
        found: dict[str, Any] = response.json()[key]
        return found

    def _list(self, path: str, key: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        # An empty filter list would mean "no filter" to Neutron: answer empty instead.
        if any(isinstance(value, list) and not value for value in query.values()):
            return []
        response = self._network.get(path, params=query)
        _raise_for_status(response, path)
        found: list[dict[str, Any]] = response.json()[key]
        return found


class NeutronError(RuntimeError):
    """Neutron answered with an error other than 'not found'."""


def _raise_for_status(response: Any, path: str) -> None:
    if response.status_code >= 400:
        raise NeutronError(f"GET {path}: HTTP {response.status_code}: {response.text[:300]}")
