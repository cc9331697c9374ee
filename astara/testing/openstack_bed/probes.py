"""What tests look at on the host of the OpenStack bed: taps, OVS ports, domains, servers."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack

from astara.testing.openstack_bed import host


def tap_name(port_id: str) -> str:
    """The tap Nova's libvirt driver makes for a Neutron port (os-vif's naming)."""
    return ("tap" + port_id)[:14]


@dataclass(frozen=True)
class OvsPort:
    bridge: str
    tag: int | None
    external_ids: dict[str, str]
    other_config: dict[str, str]


def ovs_port(name: str) -> OvsPort | None:
    """The OVS port ``name`` (its bridge, local VLAN tag and ids), None when absent."""
    found = json.loads(
        host.vsctl(
            "--format=json",
            "--columns=tag,other_config",
            "find",
            "Port",
            f"name={name}",
        )
    )["data"]
    if not found:
        return None
    tag, other = found[0]
    ids = json.loads(
        host.vsctl("--format=json", "--columns=external_ids", "find", "Interface", f"name={name}")
    )["data"][0][0]
    return OvsPort(
        bridge=host.vsctl("port-to-br", name),
        tag=tag if isinstance(tag, int) else None,
        external_ids=dict(ids[1]),
        other_config=dict(other[1]),
    )


def link_exists(name: str) -> bool:
    done = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False)
    return done.returncode == 0


def domains() -> list[str]:
    """Every libvirt domain, running or not (``virsh list --all``)."""
    return host.virsh("list", "--all", "--name").split()


def qemu_pid(domain: str) -> int:
    """The pid of a running domain's QEMU (from the pid file libvirt keeps)."""
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text())


def boot(
    conn: openstack.connection.Connection,
    name: str,
    image_id: str,
    flavor: str,
    port_ids: list[str],
    timeout: float = 300,
    **extra: Any,
) -> Any:
    """Boot a server on pre-made ports and wait until it is ACTIVE (ERROR raises with why)."""
    flavor_id = conn.compute.find_flavor(flavor, ignore_missing=False).id
    server = conn.compute.create_server(
        name=name,
        image_id=image_id,
        flavor_id=flavor_id,
        networks=[{"port": port_id} for port_id in port_ids],
        **extra,
    )
    return conn.compute.wait_for_server(server, status="ACTIVE", interval=0.5, wait=timeout)
