"""This orchestrator host's own port on the management network.

The orchestrator reaches appliances booted by Nova (their API, their heartbeats to it) through
a Neutron port of its own on the management network, wired by the cloud's L2 agent like any
VM's port: the port is bound to this host, and an interface on the integration bridge carries
the external ids the agent looks for (``iface-id``, ``attached-mac``, ``iface-status``), so
the agent tags it with the network's local VLAN and lets it through the firewall. The
interface lives in the host namespace with the port's MAC and fixed addresses.

It lives in ``orchestrator/``, not ``providers/``: it is the orchestrator's own presence on
the network, whatever provider boots the appliances, and it outlives every instance.

The port is found by ``device_id`` (a UUID derived from the host name) and Astara's
``device_owner``, never by name, so renaming it in Neutron breaks nothing. ``ensure_local_port``
converges from whatever it finds: a second run changes nothing, a wrong MAC, MTU or address
on the interface is corrected, a port bound elsewhere is bound here again. Planning is pure
(``plan``); the interface driver (Open vSwitch now, a no-op driver for unit tests) and the
Neutron client are passed in.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from oslo_config import cfg

LOG = logging.getLogger(__name__)

DEVICE_OWNER = "astara:management"
# device_id = uuid5(this namespace, host name): stable across restarts, one per host.
DEVICE_ID_NAMESPACE = uuid.UUID("6f1d2b8e-93a4-5c0b-8d7e-2a41c3e9b5f0")


class LocalPortError(RuntimeError):
    """The local port could not be made ready; the message says which step failed."""


@dataclass(frozen=True)
class LocalPort:
    """The port as the host sees it: interface name, MAC, addresses (``addr/prefixlen``)."""

    port_id: str
    name: str
    mac: str
    addresses: tuple[str, ...]
    mtu: int


@dataclass(frozen=True)
class Observed:
    """What an interface driver sees of the interface now."""

    bridge: str | None
    external_ids: Mapping[str, str]
    mac: str | None
    mtu: int | None
    up: bool
    # Global-scope addresses as ``addr/prefixlen`` (link-local ones are the kernel's).
    addresses: frozenset[str] = frozenset()


StepKind = Literal[
    "unplug", "plug", "set_mac", "set_mtu", "add_address", "remove_address", "set_up"
]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    value: str = ""


class InterfaceDriver(Protocol):
    """Puts the interface on the bridge and configures it in the host namespace."""

    def observe(self, name: str) -> Observed | None:
        """The interface's state, None when it does not exist."""
        ...

    def plug(self, bridge: str, name: str, external_ids: Mapping[str, str]) -> None:
        """Create the interface on ``bridge`` (or update its ids) as the L2 agent expects."""
        ...

    def unplug(self, name: str) -> None: ...

    def set_mac(self, name: str, mac: str) -> None: ...

    def set_mtu(self, name: str, mtu: int) -> None: ...

    def add_address(self, name: str, address: str) -> None: ...

    def remove_address(self, name: str, address: str) -> None: ...

    def set_up(self, name: str) -> None: ...


@dataclass(frozen=True)
class ManagementSettings:
    """The ``[management]`` options (see ``astara.orchestrator.config``)."""

    network_id: str
    subnet_id: str | None
    host: str
    integration_bridge: str
    interface_name: str
    port_active_timeout: float

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> ManagementSettings:
        group = conf.management
        if not group.network_id:
            raise LocalPortError("[management] network_id is not set")
        return cls(
            network_id=group.network_id,
            subnet_id=group.subnet_id,
            host=group.host,
            integration_bridge=group.integration_bridge,
            interface_name=group.interface_name,
            port_active_timeout=group.port_active_timeout,
        )


def device_id(host: str) -> str:
    return str(uuid.uuid5(DEVICE_ID_NAMESPACE, host))


def external_ids(port_id: str, mac: str) -> dict[str, str]:
    return {"iface-id": port_id, "attached-mac": mac, "iface-status": "active"}


def plan(desired: LocalPort, bridge: str, observed: Observed | None) -> list[Step]:
    """The steps that make the interface match ``desired``; none when it already does."""
    wanted_ids = external_ids(desired.port_id, desired.mac)
    steps: list[Step] = []
    if observed is not None and observed.bridge not in (None, bridge):
        steps.append(Step("unplug"))
        observed = None
    if observed is None or observed.bridge is None:
        steps.append(Step("plug"))
        observed = Observed(None, wanted_ids, None, None, False)
    elif any(observed.external_ids.get(k) != v for k, v in wanted_ids.items()):
        steps.append(Step("plug"))
    if observed.mac != desired.mac:
        steps.append(Step("set_mac", desired.mac))
    if observed.mtu != desired.mtu:
        steps.append(Step("set_mtu", str(desired.mtu)))
    steps += [
        Step("remove_address", a) for a in sorted(observed.addresses - set(desired.addresses))
    ]
    steps += [Step("add_address", a) for a in desired.addresses if a not in observed.addresses]
    if not observed.up:
        steps.append(Step("set_up"))
    return steps


def apply(driver: InterfaceDriver, desired: LocalPort, bridge: str, steps: Sequence[Step]) -> None:
    name = desired.name
    actions: dict[StepKind, Callable[[str], None]] = {
        "unplug": lambda _: driver.unplug(name),
        "plug": lambda _: driver.plug(bridge, name, external_ids(desired.port_id, desired.mac)),
        "set_mac": lambda mac: driver.set_mac(name, mac),
        "set_mtu": lambda mtu: driver.set_mtu(name, int(mtu)),
        "add_address": lambda address: driver.add_address(name, address),
        "remove_address": lambda address: driver.remove_address(name, address),
        "set_up": lambda _: driver.set_up(name),
    }
    for step in steps:
        LOG.info("management port %s: %s %s on %s", desired.port_id, step.kind, step.value, name)
        actions[step.kind](step.value)


def ensure_local_port(
    network: Any,
    driver: InterfaceDriver,
    settings: ManagementSettings,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> LocalPort:
    """Make this host's management port exist, wired and ACTIVE; return it.

    ``network`` is an openstacksdk network proxy (``connection.network``) with rights on the
    management network and on port bindings (Astara's service user).
    """
    port = _ensure_neutron_port(network, settings)
    desired = _local_port(network, port, settings)
    steps = plan(desired, settings.integration_bridge, driver.observe(desired.name))
    apply(driver, desired, settings.integration_bridge, steps)
    _wait_active(network, desired.port_id, settings.port_active_timeout, sleep, clock)
    return desired


def remove_local_port(network: Any, driver: InterfaceDriver, settings: ManagementSettings) -> None:
    """Remove the interface and this host's management port(s) from Neutron."""
    if driver.observe(settings.interface_name) is not None:
        driver.unplug(settings.interface_name)
    for port in _our_ports(network, settings.host):
        LOG.info("management port %s: deleting", port.id)
        network.delete_port(port.id, ignore_missing=True)


def _our_ports(network: Any, host: str) -> list[Any]:
    return list(network.ports(device_id=device_id(host), device_owner=DEVICE_OWNER))


def _ensure_neutron_port(network: Any, settings: ManagementSettings) -> Any:
    found = sorted(_our_ports(network, settings.host), key=lambda p: p.created_at or "")
    keep = next((p for p in found if p.network_id == settings.network_id), None)
    for extra in found:
        if extra is not keep:
            # Another network (the option changed) or a duplicate left by a crash.
            LOG.info("management port %s: deleting (not the one this host keeps)", extra.id)
            network.delete_port(extra.id, ignore_missing=True)
    fixed_ips = [{"subnet_id": settings.subnet_id}] if settings.subnet_id else None
    if keep is None:
        created = network.create_port(
            network_id=settings.network_id,
            name=f"astara-management-{settings.host}",
            device_id=device_id(settings.host),
            device_owner=DEVICE_OWNER,
            binding_host_id=settings.host,
            **({"fixed_ips": fixed_ips} if fixed_ips else {}),
        )
        LOG.info("management port %s: created for host %s", created.id, settings.host)
        return created
    changes: dict[str, Any] = {}
    if keep.binding_host_id != settings.host:
        changes["binding_host_id"] = settings.host
    subnets = {ip["subnet_id"] for ip in keep.fixed_ips}
    if settings.subnet_id and settings.subnet_id not in subnets:
        changes["fixed_ips"] = fixed_ips
    if changes:
        LOG.info("management port %s: updating %s", keep.id, ", ".join(sorted(changes)))
        return network.update_port(keep.id, **changes)
    return keep


def _local_port(network: Any, port: Any, settings: ManagementSettings) -> LocalPort:
    addresses = []
    for fixed in port.fixed_ips:
        if settings.subnet_id and fixed["subnet_id"] != settings.subnet_id:
            continue
        prefix = ipaddress.ip_network(network.get_subnet(fixed["subnet_id"]).cidr).prefixlen
        addresses.append(f"{fixed['ip_address']}/{prefix}")
    if not addresses:
        raise LocalPortError(f"management port {port.id} has no fixed IP on the management subnet")
    mtu = network.get_network(port.network_id).mtu or 1500
    return LocalPort(
        port_id=port.id,
        name=settings.interface_name,
        mac=port.mac_address.lower(),
        addresses=tuple(addresses),
        mtu=mtu,
    )


def _wait_active(
    network: Any,
    port_id: str,
    timeout: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    deadline = clock() + timeout
    while True:
        port = network.get_port(port_id)
        if port.status == "ACTIVE":
            return
        if port.binding_vif_type == "binding_failed":
            raise LocalPortError(
                f"management port {port_id}: binding failed (no L2 agent alive on host "
                f"{port.binding_host_id}?)"
            )
        if clock() >= deadline:
            raise LocalPortError(
                f"management port {port_id} is {port.status}, not ACTIVE, after {timeout:.0f} s "
                "(is the L2 agent wiring the integration bridge?)"
            )
        sleep(0.5)


class OvsInterfaceDriver:
    """An OVS internal interface on the integration bridge, configured over netlink.

    ovs-vsctl does the bridge side in one transaction; pyroute2 the host side. Addresses are
    added without duplicate address detection: Neutron allocated them to this port alone.
    """

    def __init__(self, vsctl: Callable[[Sequence[str]], str] | None = None) -> None:
        self._vsctl = vsctl or _vsctl

    def observe(self, name: str) -> Observed | None:
        found = json.loads(
            self._vsctl(
                ["--format=json", "--columns=external_ids", "find", "Interface", f"name={name}"]
            )
        )["data"]
        link = _link(name)
        if not found and link is None:
            return None
        bridge = self._vsctl(["port-to-br", name]).strip() if found else None
        ids = dict(found[0][0][1]) if found else {}
        if link is None:
            return Observed(bridge, ids, None, None, False)
        return replace(link, bridge=bridge, external_ids=ids)

    def plug(self, bridge: str, name: str, external_ids: Mapping[str, str]) -> None:
        ids = [f"external_ids:{key}={value}" for key, value in sorted(external_ids.items())]
        self._vsctl(
            [
                "--may-exist",
                "add-port",
                bridge,
                name,
                "--",
                "set",
                "Interface",
                name,
                "type=internal",
                *ids,
            ]
        )
        _wait_link(name)

    def unplug(self, name: str) -> None:
        self._vsctl(["--if-exists", "del-port", name])

    def set_mac(self, name: str, mac: str) -> None:
        _ipr("link", "set", name, address=mac)

    def set_mtu(self, name: str, mtu: int) -> None:
        _ipr("link", "set", name, mtu=mtu)

    def add_address(self, name: str, address: str) -> None:
        iface = ipaddress.ip_interface(address)
        flags = 0x02 if iface.version == 6 else 0  # IFA_F_NODAD
        _ipr(
            "addr",
            "add",
            name,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            flags=flags,
        )

    def remove_address(self, name: str, address: str) -> None:
        iface = ipaddress.ip_interface(address)
        _ipr("addr", "del", name, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def set_up(self, name: str) -> None:
        _ipr("link", "set", name, state="up")


def _vsctl(args: Sequence[str]) -> str:
    done = subprocess.run(
        ["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise LocalPortError(f"ovs-vsctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _ipr(kind: str, command: str, name: str, **kwargs: Any) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            raise LocalPortError(f"interface {name} is missing")
        getattr(ipr, kind)(command, index=index[0], **kwargs)


def _link(name: str) -> Observed | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            return None
        link = ipr.get_links(index[0])[0]
        addresses = frozenset(
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index[0])
            if a["scope"] == 0
        )
    return Observed(
        bridge=None,
        external_ids={},
        mac=link.get_attr("IFLA_ADDRESS"),
        mtu=link.get_attr("IFLA_MTU"),
        up=bool(link["flags"] & 1),
        addresses=addresses,
    )


def _wait_link(name: str, timeout: float = 10.0) -> None:
    # vswitchd creates the internal interface's kernel device after the transaction.
    deadline = time.monotonic() + timeout
    while _link(name) is None:
        if time.monotonic() > deadline:
            raise LocalPortError(f"ovs-vswitchd made no interface {name} within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class NoopInterfaceDriver:
    """Keeps the interface in memory: for unit tests of everything above the host."""

    interfaces: dict[str, Observed] = field(default_factory=dict)

    def observe(self, name: str) -> Observed | None:
        return self.interfaces.get(name)

    def plug(self, bridge: str, name: str, external_ids: Mapping[str, str]) -> None:
        current = self.interfaces.get(name) or Observed(None, {}, "02:00:00:00:00:01", 1500, False)
        self.interfaces[name] = replace(current, bridge=bridge, external_ids=dict(external_ids))

    def unplug(self, name: str) -> None:
        self.interfaces.pop(name, None)

    def set_mac(self, name: str, mac: str) -> None:
        self.interfaces[name] = replace(self.interfaces[name], mac=mac)

    def set_mtu(self, name: str, mtu: int) -> None:
        self.interfaces[name] = replace(self.interfaces[name], mtu=mtu)

    def add_address(self, name: str, address: str) -> None:
        current = self.interfaces[name]
        self.interfaces[name] = replace(current, addresses=current.addresses | {address})

    def remove_address(self, name: str, address: str) -> None:
        current = self.interfaces[name]
        self.interfaces[name] = replace(current, addresses=current.addresses - {address})

    def set_up(self, name: str) -> None:
        self.interfaces[name] = replace(self.interfaces[name], up=True)


DRIVERS: dict[str, Callable[[], InterfaceDriver]] = {
    "ovs": OvsInterfaceDriver,
    "noop": NoopInterfaceDriver,
}


def interface_driver(name: str) -> InterfaceDriver:
    return DRIVERS[name]()
