"""The Neutron objects every demo, test and benchmark topology starts from."""

from __future__ import annotations

from typing import Any

import openstack


def tenant_network(
    sdk: openstack.connection.Connection, project: str, name: str, cidr: str
) -> tuple[Any, Any]:
    """A project network with one IPv4 subnet: (network, subnet)."""
    net = sdk.network.create_network(name=name, project_id=project)
    sub = sdk.network.create_subnet(
        network_id=net.id, cidr=cidr, ip_version=4, project_id=project, name=name
    )
    return net, sub


def external_network(
    sdk: openstack.connection.Connection,
    project: str,
    name: str,
    cidr: str,
    gateway_ip: str,
    physical_network: str,
) -> Any:
    """A flat external network whose subnet's gateway is the outside world's address."""
    ext = sdk.network.create_network(
        name=name,
        project_id=project,
        is_router_external=True,
        provider_network_type="flat",
        provider_physical_network=physical_network,
    )
    sdk.network.create_subnet(
        network_id=ext.id, cidr=cidr, gateway_ip=gateway_ip, ip_version=4, project_id=project
    )
    return ext
