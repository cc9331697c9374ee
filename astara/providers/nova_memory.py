"""An in-memory cloud for the Nova provider's unit tests (the no-op driver beside ``SdkCloud``).

It keeps servers and ports in dicts and behaves as Nova and Neutron do where the provider's
decisions depend on it: tags filter with AND, a MAC is unique per network, attaching needs an
ACTIVE server, a server's ports are released when it is deleted. Tests move servers through
Nova's states (``set_status``) and make the next boot fail (``refuse_boots``).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from astara.providers.base import ProviderError
from astara.providers.nova_cloud import PortInfo, ServerInfo


@dataclass
class MemoryServer:
    info: ServerInfo
    image_id: str
    flavor_id: str
    user_data: bytes
    availability_zone: str | None
    server_group: str | None


@dataclass
class InMemoryCloud:
    images: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)  # id: name, tags
    flavors: dict[str, str] = field(default_factory=dict)  # id: name
    subnets: dict[str, tuple[str, str]] = field(default_factory=dict)  # id: network id, cidr
    mtus: dict[str, int] = field(default_factory=dict)
    extensions: set[str] = field(default_factory=lambda: {"ip_allocation"})
    ports_by_id: dict[str, PortInfo] = field(default_factory=dict)
    servers_by_id: dict[str, MemoryServer] = field(default_factory=dict)
    refusal: str | None = None
    detach_refusal: str | None = None  # Nova refusing a detach (a server whose domain died)
    calls: list[str] = field(default_factory=list)
    _addresses: itertools.count = field(default_factory=lambda: itertools.count(10))

    # -- what tests do -----------------------------------------------------------------------

    def refuse_boots(self, reason: str | None) -> None:
        self.refusal = reason

    def set_status(self, server_id: str, status: str, fault: str | None = None) -> None:
        server = self.servers_by_id[server_id]
        server.info = replace(server.info, status=status, fault=fault)

    def activate_all(self) -> None:
        for server_id, server in self.servers_by_id.items():
            if server.info.status == "BUILD":
                self.set_status(server_id, "ACTIVE")

    # -- NovaCloud --------------------------------------------------------------------------

    def image_id(self, name_or_id: str | None, tag: str) -> str:
        for image_id, (name, tags) in self.images.items():
            if name_or_id in (image_id, name) or (name_or_id is None and tag in tags):
                return image_id
        raise ProviderError(f"no image {name_or_id or 'tagged ' + tag!r}")

    def flavor_id(self, name_or_id: str) -> str:
        for flavor_id, name in self.flavors.items():
            if name_or_id in (flavor_id, name):
                return flavor_id
        raise ProviderError(f"no flavor {name_or_id!r}")

    def subnet_prefixlen(self, subnet_id: str) -> int:
        return int(self.subnets[subnet_id][1].rsplit("/", 1)[1])

    def network_mtu(self, network_id: str) -> int:
        return self.mtus.get(network_id, 1500)

    def has_extension(self, alias: str) -> bool:
        return alias in self.extensions

    def create_port(
        self,
        network_id: str,
        name: str,
        tags: Sequence[str],
        subnet_id: str | None = None,
        mac: str | None = None,
        addressless: bool = False,
    ) -> PortInfo:
        self.calls.append(f"create_port {name}")
        if mac and any(
            p.mac == mac and p.network_id == network_id for p in self.ports_by_id.values()
        ):
            raise ProviderError(f"MAC address {mac} is already in use on network {network_id}")
        subnet = subnet_id or next(
            (sid for sid, (net, _) in self.subnets.items() if net == network_id), None
        )
        addresses: tuple[str, ...] = ()
        if subnet and not addressless:
            base = self.subnets[subnet][1].rsplit("/", 1)[0]
            addresses = (
                f"{base.rstrip(':0.')}{'::' if ':' in base else '.'}{next(self._addresses)}",
            )
        port = PortInfo(
            id=str(uuid.uuid4()),
            network_id=network_id,
            mac=mac or "fa:16:3e:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3]),
            name=name,
            device_id="",
            addresses=addresses,
            subnet_ids=(subnet,) if addresses and subnet else (),
            tags=frozenset(tags),
        )
        self.ports_by_id[port.id] = port
        return port

    def ports(self, tags: Sequence[str] = (), name: str | None = None) -> list[PortInfo]:
        return [
            p
            for p in self.ports_by_id.values()
            if set(tags) <= p.tags and (name is None or p.name == name)
        ]

    def set_port_tags(self, port_id: str, tags: Sequence[str]) -> None:
        self.ports_by_id[port_id] = replace(self.ports_by_id[port_id], tags=frozenset(tags))

    def delete_port(self, port_id: str) -> None:
        self.calls.append(f"delete_port {port_id}")
        self.ports_by_id.pop(port_id, None)

    def create_server(
        self,
        name: str,
        image_id: str,
        flavor_id: str,
        port_ids: Sequence[str],
        user_data: bytes,
        tags: Sequence[str],
        availability_zone: str | None,
        server_group: str | None,
    ) -> ServerInfo:
        self.calls.append(f"create_server {name}")
        if self.refusal is not None:
            raise ProviderError(f"create server: {self.refusal}")
        info = ServerInfo(str(uuid.uuid4()), "BUILD", frozenset(tags))
        self.servers_by_id[info.id] = MemoryServer(
            info, image_id, flavor_id, user_data, availability_zone, server_group
        )
        for port_id in port_ids:
            self.ports_by_id[port_id] = replace(self.ports_by_id[port_id], device_id=info.id)
        return info

    def servers(self, tags: Sequence[str]) -> list[ServerInfo]:
        return [s.info for s in self.servers_by_id.values() if set(tags) <= s.info.tags]

    def set_server_tags(self, server_id: str, tags: Sequence[str]) -> None:
        server = self.servers_by_id[server_id]
        server.info = replace(server.info, tags=frozenset(tags))

    def delete_server(self, server_id: str) -> None:
        self.calls.append(f"delete_server {server_id}")
        self.servers_by_id.pop(server_id, None)
        for port in list(self.ports_by_id.values()):
            if port.device_id == server_id:  # Nova unbinds the ports it did not create
                self.ports_by_id[port.id] = replace(port, device_id="")

    def attach_port(self, server_id: str, port_id: str) -> None:
        self.calls.append(f"attach_port {port_id}")
        if self.servers_by_id[server_id].info.status != "ACTIVE":
            raise ProviderError(f"attach port {port_id}: server {server_id} is not ACTIVE")
        self.ports_by_id[port_id] = replace(self.ports_by_id[port_id], device_id=server_id)

    def detach_port(self, server_id: str, port_id: str) -> None:
        self.calls.append(f"detach_port {port_id}")
        if self.detach_refusal is not None:
            raise ProviderError(f"detach port {port_id}: {self.detach_refusal}")
        if port_id in self.ports_by_id:
            self.ports_by_id[port_id] = replace(self.ports_by_id[port_id], device_id="")
