"""What the Nova provider asks of the cloud, as one small interface, and its openstacksdk driver.

The provider's decisions (which port, which tag, when to claim a pooled server) are tested
against the in-memory cloud of ``nova_memory``; ``SdkCloud`` is the only code here that speaks
to Nova, Glance and Neutron, and it only translates.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import openstack
from openstack import exceptions as sdk_exceptions

from astara.providers.base import ProviderError


@dataclass(frozen=True)
class PortInfo:
    id: str
    network_id: str
    mac: str
    name: str
    device_id: str  # the server the port is attached to ('' when none)
    addresses: tuple[str, ...]
    subnet_ids: tuple[str, ...]
    tags: frozenset[str]


@dataclass(frozen=True)
class ServerInfo:
    id: str
    status: str  # Nova's: BUILD, ACTIVE, ERROR, SHUTOFF, DELETED...
    tags: frozenset[str]
    fault: str | None = None


class NovaCloud(Protocol):
    """The calls the Nova provider makes; each raises ProviderError with the cloud's reason."""

    def image_id(self, name_or_id: str | None, tag: str) -> str: ...

    def flavor_id(self, name_or_id: str) -> str: ...

    def subnet_prefixlen(self, subnet_id: str) -> int: ...

    def network_mtu(self, network_id: str) -> int: ...

    def has_extension(self, alias: str) -> bool: ...

    def create_port(
        self,
        network_id: str,
        name: str,
        tags: Sequence[str],
        subnet_id: str | None = None,
        mac: str | None = None,
        addressless: bool = False,
    ) -> PortInfo:
        """``addressless``: no fixed IP and no port security (a service port)."""
        ...

    def ports(self, tags: Sequence[str] = (), name: str | None = None) -> list[PortInfo]: ...

    def set_port_tags(self, port_id: str, tags: Sequence[str]) -> None: ...

    def delete_port(self, port_id: str) -> None: ...

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
    ) -> ServerInfo: ...

    def servers(self, tags: Sequence[str]) -> list[ServerInfo]: ...

    def set_server_tags(self, server_id: str, tags: Sequence[str]) -> None: ...

    def delete_server(self, server_id: str) -> None: ...

    def attach_port(self, server_id: str, port_id: str) -> None: ...

    def detach_port(self, server_id: str, port_id: str) -> None: ...


def _reason(exc: sdk_exceptions.SDKException) -> str:
    details = getattr(exc, "details", None)
    return str(details or exc)


class SdkCloud:
    """NovaCloud over openstacksdk (Astara's service user, from clouds.yaml)."""

    def __init__(self, connection: openstack.connection.Connection) -> None:
        self._conn = connection
        self._prefixlens: dict[str, int] = {}  # a subnet's prefix never changes

    @classmethod
    def connect(cls, cloud: str | None, timeout: float) -> SdkCloud:
        return cls(openstack.connect(cloud=cloud, api_timeout=timeout))

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except sdk_exceptions.SDKException as exc:
            raise ProviderError(f"{what}: {_reason(exc)}") from exc

    def image_id(self, name_or_id: str | None, tag: str) -> str:
        image = self._conn.image
        if name_or_id:
            found = self._call("find image", image.find_image, name_or_id, ignore_missing=True)
            if found is None:
                raise ProviderError(f"no image {name_or_id!r} in Glance ([nova] image)")
            return str(found.id)
        tagged = self._call("list images", lambda: list(image.images(tag=tag, status="active")))
        if not tagged:
            raise ProviderError(
                f"no active image tagged {tag!r} in Glance: build one with astara-image build "
                "and upload it with that tag ([nova] image_tag)"
            )
        return str(max(tagged, key=lambda i: i.created_at or "").id)

    def flavor_id(self, name_or_id: str) -> str:
        found = self._call(
            "find flavor", self._conn.compute.find_flavor, name_or_id, ignore_missing=True
        )
        if found is None:
            raise ProviderError(f"no flavor {name_or_id!r} in Nova ([nova] flavor)")
        return str(found.id)

    def subnet_prefixlen(self, subnet_id: str) -> int:
        if subnet_id not in self._prefixlens:
            subnet = self._call("get subnet", self._conn.network.get_subnet, subnet_id)
            self._prefixlens[subnet_id] = int(str(subnet.cidr).rsplit("/", 1)[1])
        return self._prefixlens[subnet_id]

    def network_mtu(self, network_id: str) -> int:
        network = self._call("get network", self._conn.network.get_network, network_id)
        return int(network.mtu or 1500)

    def has_extension(self, alias: str) -> bool:
        found = self._conn.network.find_extension(alias, ignore_missing=True)
        return found is not None

    def create_port(
        self,
        network_id: str,
        name: str,
        tags: Sequence[str],
        subnet_id: str | None = None,
        mac: str | None = None,
        addressless: bool = False,
    ) -> PortInfo:
        attrs: dict[str, Any] = {"network_id": network_id, "name": name}
        if subnet_id:
            attrs["fixed_ips"] = [{"subnet_id": subnet_id}]
        if mac:
            attrs["mac_address"] = mac
        if addressless:
            attrs.update(fixed_ips=[], port_security_enabled=False)
        port = self._call(
            f"create port on network {network_id}", self._conn.network.create_port, **attrs
        )
        # Neutron takes tags in a request of their own.
        self.set_port_tags(port.id, tags)
        return _port_info(port, tags)

    def ports(self, tags: Sequence[str] = (), name: str | None = None) -> list[PortInfo]:
        query: dict[str, str] = {}
        if tags:
            query["tags"] = ",".join(tags)
        if name:
            query["name"] = name
        found = self._call("list ports", lambda: list(self._conn.network.ports(**query)))
        return [_port_info(port) for port in found]

    def set_port_tags(self, port_id: str, tags: Sequence[str]) -> None:
        port = self._conn.network.get_port(port_id)
        self._call(f"tag port {port_id}", self._conn.network.set_tags, port, list(tags))

    def delete_port(self, port_id: str) -> None:
        self._call(f"delete port {port_id}", self._conn.network.delete_port, port_id)

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
        attrs: dict[str, Any] = {
            "name": name,
            "image_id": image_id,
            "flavor_id": flavor_id,
            "networks": [{"port": port_id} for port_id in port_ids],
            "config_drive": True,
            "user_data": base64.b64encode(user_data).decode(),
            "tags": list(tags),
        }
        if availability_zone:
            attrs["availability_zone"] = availability_zone
        if server_group:
            attrs["scheduler_hints"] = {"group": server_group}
        server = self._call("create server", self._conn.compute.create_server, **attrs)
        return ServerInfo(server.id, server.status or "BUILD", frozenset(tags))

    def servers(self, tags: Sequence[str]) -> list[ServerInfo]:
        found = self._call(
            "list servers",
            lambda: list(self._conn.compute.servers(details=True, tags=",".join(tags))),
        )
        return [_server_info(server) for server in found]

    def set_server_tags(self, server_id: str, tags: Sequence[str]) -> None:
        server = self._conn.compute.get_server(server_id)
        self._call(f"tag server {server_id}", server.set_tags, self._conn.compute, list(tags))

    def delete_server(self, server_id: str) -> None:
        self._call(f"delete server {server_id}", self._conn.compute.delete_server, server_id)

    def attach_port(self, server_id: str, port_id: str) -> None:
        self._call(
            f"attach port {port_id} to server {server_id}",
            self._conn.compute.create_server_interface,
            server_id,
            port_id=port_id,
        )

    def detach_port(self, server_id: str, port_id: str) -> None:
        try:
            self._conn.compute.delete_server_interface(port_id, server=server_id)
        except sdk_exceptions.NotFoundException:
            return  # already detached (or the server is gone)
        except sdk_exceptions.SDKException as exc:
            raise ProviderError(f"detach port {port_id}: {_reason(exc)}") from exc


def _port_info(port: Any, tags: Sequence[str] | None = None) -> PortInfo:
    fixed = port.fixed_ips or []
    return PortInfo(
        id=port.id,
        network_id=port.network_id,
        mac=str(port.mac_address).lower(),
        name=port.name or "",
        device_id=port.device_id or "",
        addresses=tuple(ip["ip_address"] for ip in fixed),
        subnet_ids=tuple(ip["subnet_id"] for ip in fixed),
        tags=frozenset(port.tags or () if tags is None else tags),
    )


def _server_info(server: Any) -> ServerInfo:
    fault = server.fault or {}
    return ServerInfo(
        id=server.id,
        status=server.status or "",
        tags=frozenset(server.tags or ()),
        fault=fault.get("message") if isinstance(fault, dict) else None,
    )
