"""What an Astara operator sets up in a cloud once, as idempotent functions.

The management network is IPv6 with a unique local prefix (ULA): appliances and the
orchestrator only talk among themselves on it, a random ULA /64 cannot clash with the IPv4
or global IPv6 space tenants bring, and the netns provider's management link is a ULA /64 too.
Neutron hands out its addresses (no SLAAC, no DHCP: there is no router on it and Astara is
the DHCP service); an appliance learns its address from its config drive. It is a VXLAN network
owned by the ``service`` project Astara's user works in, so the orchestrator's ports and the
appliances' ports share that project's default security group (members reach each other).

The external network is flat on the physical network ``public`` (``br-ex``), with the
external subnet's gateway held by the bed's outside namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import openstack

from astara.testing.openstack_bed.config import PHYSNET

MANAGEMENT_NETWORK = "astara-management"
MANAGEMENT_CIDR = "fd6b:3c3e:8a51:1::/64"
EXTERNAL_NETWORK = "public"
EXTERNAL_CIDR = "172.24.4.0/24"
APPLIANCE_FLAVOR = "astara.appliance"
TINY_FLAVOR = "astara.tiny"
APPLIANCE_GROUP = "astara-appliances"
# name -> (vCPUs, RAM MiB, disk GiB)
FLAVORS = {APPLIANCE_FLAVOR: (1, 512, 2), TINY_FLAVOR: (1, 256, 1)}


@dataclass(frozen=True)
class Network:
    network_id: str
    subnet_id: str
    cidr: str
    gateway: str | None


def ensure_management_network(
    conn: openstack.connection.Connection, project_id: str, cidr: str = MANAGEMENT_CIDR
) -> Network:
    """The management network and its subnet in ``project_id`` (Astara's service project)."""
    net = conn.network.find_network(MANAGEMENT_NETWORK, project_id=project_id)
    if net is None:
        net = conn.network.create_network(
            name=MANAGEMENT_NETWORK, project_id=project_id, provider_network_type="vxlan"
        )
    subnet = _find_subnet(conn, net.id, cidr)
    if subnet is None:
        subnet = conn.network.create_subnet(
            name=MANAGEMENT_NETWORK,
            network_id=net.id,
            project_id=project_id,
            ip_version=6,
            cidr=cidr,
            gateway_ip=None,
            is_dhcp_enabled=False,
        )
    return Network(net.id, subnet.id, cidr, None)


def ensure_external_network(
    conn: openstack.connection.Connection, cidr: str = EXTERNAL_CIDR
) -> Network:
    """The flat external network on ``public``; its gateway is the subnet's first address."""
    gateway = str(next(ipaddress.ip_network(cidr).hosts()))
    net = conn.network.find_network(EXTERNAL_NETWORK)
    if net is None:
        net = conn.network.create_network(
            name=EXTERNAL_NETWORK,
            is_router_external=True,
            provider_network_type="flat",
            provider_physical_network=PHYSNET,
        )
    subnet = _find_subnet(conn, net.id, cidr)
    if subnet is None:
        subnet = conn.network.create_subnet(
            name=EXTERNAL_NETWORK,
            network_id=net.id,
            ip_version=4,
            cidr=cidr,
            gateway_ip=gateway,
            is_dhcp_enabled=False,
        )
    return Network(net.id, subnet.id, cidr, gateway)


def _find_subnet(
    conn: openstack.connection.Connection, network_id: str, cidr: str
) -> openstack.network.v2.subnet.Subnet | None:
    wanted = ipaddress.ip_network(cidr)
    for subnet in conn.network.subnets(network_id=network_id):
        if ipaddress.ip_network(subnet.cidr) == wanted:
            return subnet
    return None


def ensure_flavors(conn: openstack.connection.Connection) -> dict[str, str]:
    """Public flavors for appliances and tiny workloads; their ids by name."""
    ids = {}
    for name, (vcpus, ram, disk) in FLAVORS.items():
        flavor = conn.compute.find_flavor(name)
        if flavor is None:
            flavor = conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk)
        ids[name] = flavor.id
    return ids


def ensure_server_group(conn: openstack.connection.Connection, name: str = APPLIANCE_GROUP) -> str:
    """A soft anti-affinity group for appliance pairs, in the caller's project."""
    group = conn.compute.find_server_group(name)
    if group is None:
        group = conn.compute.create_server_group(name=name, policy="soft-anti-affinity")
    return str(group.id)


def size_quotas(conn: openstack.connection.Connection, project_id: str) -> None:
    """Nova's default quotas (10 servers, 10 members per server group) in Astara's project stop
    replacements, which boot the new server before deleting the old one, once 10 routers run:
    size them for the routers, one replacement each and the warm pool (here: no limit)."""
    conn.set_compute_quotas(project_id, instances=-1, cores=-1, ram=-1, server_group_members=-1)
    conn.set_network_quotas(project_id, port=-1)


def upload_image(
    conn: openstack.connection.Connection,
    path: Path,
    name: str,
    properties: Mapping[str, str] | None = None,
    tags: tuple[str, ...] = (),
) -> str:
    """Upload an image (raw or qcow2, as ``qemu-img`` finds it) unless the same one is there.

    "The same": an active image of that name whose SHA-512 (Glance's os_hash_value) matches
    the file's. Returns the image id.
    """
    digest = _sha512(path)
    for image in conn.image.images(name=name):
        if image.status == "active" and image.hash_value == digest:
            if not set(tags) <= set(image.tags or ()):
                conn.image.update_image(image.id, tags=sorted({*tags, *(image.tags or ())}))
            return str(image.id)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    image = conn.image.create_image(
        name=name,
        filename=str(path),
        disk_format=info["format"],
        container_format="bare",
        visibility="public",
        wait=True,
        meta=dict(properties or {}),
    )
    if tags:
        conn.image.update_image(image.id, tags=list(tags))
    return str(image.id)


def _sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
