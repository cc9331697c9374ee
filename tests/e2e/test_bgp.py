"""BGP end to end: neutron-dynamic-routing's speaker and peer, through the real Neutron, make a
router's appliance announce its IPv6 tenant prefix to a bird2 peer outside the cloud, and
withdraw it when the interface goes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest

from astara.testing.chaos import eventually, plugin_cloud
from astara.testing.cloud import CloudInABox
from astara.testing.neutron_objects import external_network

pytestmark = pytest.mark.e2e

STATE = Path("/var/lib/astara/e2e-bgp")
UPLINK_V4, UPLINK_V6 = "172.24.30.1", "2001:db8:30::1"
TENANT_PREFIX = "2001:db8:31::/64"
PEER_AS, ROUTER_AS = 65000, 64512


class World:
    def __init__(self, cloud: CloudInABox, sdk: openstack.connection.Connection) -> None:
        self.cloud = cloud
        self.sdk = sdk
        self.project = "bgp" + str(int(time.time()))


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # Astara's Neutron plugin loaded, and with it neutron-dynamic-routing's API (the bed's).
    with plugin_cloud(STATE, "astara_neutron_bgp", "atg") as (cloud, sdk):
        yield World(cloud, sdk)


def upstream_conf(router_ip: str) -> str:
    """The peer outside the cloud: learns what the router announces, announces nothing."""
    return (
        f"router id {UPLINK_V4};\nprotocol device {{}}\n"
        f"protocol bgp appliance {{\n\tlocal as {PEER_AS};\n"
        f"\tneighbor {router_ip} as {ROUTER_AS};\n"
        "\tconnect retry time 5;\n\tipv6 { import all; export none; };\n}\n"
    )


def test_the_peer_learns_the_ipv6_tenant_prefix_and_its_withdrawal(world: World) -> None:
    sdk, project = world.sdk, world.project
    ext = external_network(sdk, project, "ext", "172.24.30.0/24", UPLINK_V4, "bgp-public")
    sdk.network.create_subnet(
        network_id=ext.id, cidr="2001:db8:30::/64", gateway_ip=UPLINK_V6, ip_version=6,
        project_id=project, is_dhcp_enabled=False,
    )  # fmt: skip
    uplink = world.cloud.uplink(ext.id, f"{UPLINK_V4}/24")
    world.cloud.uplink(ext.id, f"{UPLINK_V6}/64")
    tenant = sdk.network.create_network(name="v6", project_id=project)
    subnet = sdk.network.create_subnet(
        network_id=tenant.id, cidr=TENANT_PREFIX, ip_version=6, project_id=project,
        ipv6_ra_mode="slaac", ipv6_address_mode="slaac",
    )  # fmt: skip
    router = sdk.network.create_router(
        name="bgp", project_id=project, external_gateway_info={"network_id": ext.id}
    )
    gateway_ips = sdk.network.get_router(router.id).external_gateway_info["external_fixed_ips"]
    router_v6 = next(ip["ip_address"] for ip in gateway_ips if ":" in ip["ip_address"])

    speaker = sdk.network.create_bgp_speaker(
        name="bgp", local_as=ROUTER_AS, ip_version=6, advertise_tenant_networks=True
    )
    peer = sdk.network.create_bgp_peer(
        name="upstream", peer_ip=UPLINK_V6, remote_as=PEER_AS, auth_type="none"
    )
    sdk.network.add_bgp_peer_to_speaker(speaker, peer.id)
    sdk.network.add_gateway_network_to_speaker(speaker, ext.id)

    conf = STATE / "upstream-bird.conf"
    conf.write_text(upstream_conf(router_v6))
    control = STATE / "upstream-bird.ctl"
    world.cloud.spawn(uplink, ["bird", "-f", "-c", str(conf), "-s", str(control)])

    def learned() -> str:
        return uplink.run(["birdc", "-s", str(control), "show", "route"], check=False).stdout

    # Plugging the tenant subnet in is a router event: the appliance announces it.
    sdk.network.add_interface_to_router(router, subnet=subnet.id)
    routes: Any = eventually(
        lambda: learned() if TENANT_PREFIX in learned() else None, 120, "the prefix learned"
    )
    assert f"via {router_v6}" in routes
    sdk.network.remove_interface_from_router(router, subnet=subnet.id)
    eventually(lambda: TENANT_PREFIX not in learned(), 60, "the prefix withdrawn")
