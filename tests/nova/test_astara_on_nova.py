"""Astara on a real cloud: each router's appliance is a Nova server (from the image astara-image
builds) on Neutron's ML2/OVS, tenants' VMs are Nova servers, packets are real.

One tenant set-up (two networks, a router with a gateway and both interfaces, a VM on each,
the first with a floating IP) is shared by the tests that leave it as they found it; the tests
that create or break routers make their own. Each VM runs a small HTTP agent reached through
its floating IP from the bed's outside namespace (see astara.testing.nova_box).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openstack
import pytest

from astara.testing.netns import TopologyError, wait_for
from astara.testing.nova_box import (
    OUTSIDE_ECHO_PORT,
    WORKLOAD_IMAGE,
    NovaBox,
    Tenant,
    Vm,
    build_image,
    upload_built_image,
)
from astara.testing.openstack_bed.bed import OpenStackBed
from astara.testing.openstack_bed.host import OUTSIDE_NS
from astara.wire.defaults import API_PORT

pytestmark = pytest.mark.nova

OUTSIDE_GATEWAY = "172.24.4.1"


@pytest.fixture(scope="module")
def box(openstack_bed: OpenStackBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaBox]:
    box = NovaBox(openstack_bed, tmp_path_factory.mktemp("novabox"))
    box.up()
    yield box
    box.down()


@pytest.fixture(scope="module")
def echo() -> Iterator[None]:
    """What the outside world sees of a connection: an echo server at the external gateway."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE_NS, sys.executable, "-m", "astara.testing.echo",
         "--name", "outside", "--port", str(OUTSIDE_ECHO_PORT)],
    )  # fmt: skip
    yield
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def tenant(openstack_bed: OpenStackBed, box: NovaBox) -> Iterator[Tenant]:
    image = upload_built_image(
        openstack_bed.connect("astara-admin"), build_image("workload"), WORKLOAD_IMAGE
    )
    tenant = Tenant(openstack_bed, image)
    yield tenant
    tenant.cleanup()


@dataclass
class Routed:
    router_id: str
    vm1: Vm  # on net A, with a floating IP
    vm2: Vm  # on net B


@pytest.fixture(scope="module")
def routed(box: NovaBox, tenant: Tenant, echo: None) -> Routed:
    net_a, subnet_a = tenant.network("10.71.1.0/24")
    net_b, subnet_b = tenant.network("10.71.2.0/24")
    router_id = tenant.router(subnet_a, subnet_b)
    vm1, vm2 = tenant.vm(net_a, floating=True), tenant.vm(net_b)
    box.wait_active(router_id, 400)
    for vm in (vm1, vm2):
        tenant.wait_active(vm)
    tenant.agent_up(vm1)
    return Routed(router_id, vm1, vm2)


def _instance(box: NovaBox, router_id: str) -> str:
    (instance,) = box.store().instances(router_id)
    return instance.id


def test_dhcp_east_west_snat_and_floating_ip_between_nova_vms(
    routed: Routed, tenant: Tenant
) -> None:
    # The agent answered through the floating IP (DNAT); its address came from Astara's DHCP.
    assert f"dhcp eth0 {routed.vm1.fixed_ip}/24" in tenant.console(routed.vm1)
    wait_for(
        lambda: f"dhcp eth0 {routed.vm2.fixed_ip}/24" in tenant.console(routed.vm2),
        120,
        "the second VM's DHCP lease",
    )
    assert tenant.ask(routed.vm1, "ping", routed.vm2.fixed_ip) == "ok\n"  # east-west
    # SNAT: the outside sees the second VM (no floating IP) as the router's gateway address;
    # the first goes out as its floating IP.
    router = tenant.conn.network.get_router(routed.router_id)
    gateway_ip = router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
    echo = f"{OUTSIDE_GATEWAY}:{OUTSIDE_ECHO_PORT}"
    seen = tenant.ask_through(routed.vm1, routed.vm2, "outside", echo)
    assert (seen or "").replace("::ffff:", "") == f"outside {gateway_ip}\n"
    seen = tenant.ask(routed.vm1, "outside", echo)
    assert (seen or "").replace("::ffff:", "") == f"outside {routed.vm1.floating_ip}\n"
    assert tenant.ask(routed.vm1, "ping", "10.71.9.9") == "fail\n"  # nobody there: a real check


def test_a_vm_gets_its_own_metadata_and_forged_identity_headers_change_nothing(
    routed: Routed, tenant: Tenant
) -> None:
    own = json.loads(tenant.ask(routed.vm1, "meta") or "{}")
    assert own.get("uuid") == routed.vm1.server_id
    forged = json.loads(tenant.ask(routed.vm1, "forged", routed.vm2.server_id) or "{}")
    assert forged.get("uuid") == routed.vm1.server_id


def test_an_interface_is_added_and_removed_live(
    box: NovaBox, routed: Routed, tenant: Tenant
) -> None:
    instance = _instance(box, routed.router_id)
    servers = [s.id for s in box.servers_of(routed.router_id)]
    net_c, subnet_c = tenant.network("10.71.3.0/24")
    conn = tenant.conn
    conn.network.add_interface_to_router(routed.router_id, subnet_id=subnet_c)  # type: ignore[call-arg]
    assert wait_for(
        lambda: tenant.ask(routed.vm1, "ping", "10.71.3.1") == "ok\n", 120, "the new interface"
    )
    conn.network.remove_interface_from_router(routed.router_id, subnet_id=subnet_c)  # type: ignore[call-arg]
    assert wait_for(
        lambda: tenant.ask(routed.vm1, "ping", "10.71.3.1") == "fail\n", 120, "its removal"
    )
    # Live: the same instance on the same server all along, and its service port is gone.
    assert _instance(box, routed.router_id) == instance
    assert [s.id for s in box.servers_of(routed.router_id)] == servers
    admin = box.bed.connect("astara-admin")
    assert list(admin.network.ports(network_id=net_c, tags="astara")) == []
    assert tenant.ask(routed.vm1, "ping", routed.vm2.fixed_ip) == "ok\n"


def test_an_appliance_destroyed_behind_astaras_back_is_replaced(
    box: NovaBox, routed: Routed, tenant: Tenant
) -> None:
    old_instance = _instance(box, routed.router_id)
    (old_server,) = box.servers_of(routed.router_id)
    admin = box.bed.connect("astara-admin")
    domain = admin.compute.get_server(old_server.id).instance_name
    subprocess.run(["virsh", "destroy", domain], check=True, capture_output=True)

    def replaced() -> bool:
        record, now = box.router(routed.router_id), _instances_now(box, routed.router_id)
        # One instance, not the old one: the replacement took over and the old one went.
        return (
            record is not None
            and record.state == "active"
            and len(now) == 1
            and (now[0] != old_instance)
        )

    wait_for(replaced, 500, "a replacement ACTIVE")
    assert wait_for(
        lambda: tenant.ask(routed.vm1, "ping", routed.vm2.fixed_ip) == "ok\n",
        120,
        "traffic back",
    )
    wait_for(
        lambda: old_server.id not in {s.id for s in box.servers_of(routed.router_id)},
        120,
        "the old server deleted",
    )


def _instances_now(box: NovaBox, router_id: str) -> list[str]:
    return [instance.id for instance in box.store().instances(router_id)]


def _leftovers(box: NovaBox) -> list[str]:
    """Astara's servers and ports no router in the store owns."""
    admin = box.bed.connect("astara-admin")
    known = {instance.id for instance in box.store().all_instances()}
    found = []
    for server in admin.compute.servers(tags="astara", all_projects=True):
        if not any(tag.removeprefix("astara-instance:") in known for tag in server.tags):
            found.append(f"server {server.id}")
    for port in admin.network.ports(tags="astara"):
        if not any(tag.removeprefix("astara-instance:") in known for tag in port.tags):
            found.append(f"port {port.id}")
    return found


def test_a_kill_mid_boot_converges_and_a_deleted_router_leaves_nothing(
    box: NovaBox, tenant: Tenant, openstack_bed: OpenStackBed
) -> None:
    _, subnet = tenant.network("10.71.4.0/24")
    router_id = tenant.router(subnet)
    wait_for(lambda: box.servers_of(router_id), 120, "the appliance server requested")
    box.orchestrator.kill(signal.SIGKILL)  # mid-boot: the server is not up yet
    box.start()
    box.wait_active(router_id, 400)
    assert len(box.servers_of(router_id)) == 1
    # No orphan server or port: those the crash left are removed by the housekeeping.
    wait_for(lambda: _leftovers(box) == [], 120, f"no leftovers (now {_leftovers(box)})")
    (server,) = box.servers_of(router_id)
    instance = _instance(box, router_id)
    config_drive = openstack_bed.state_dir / "nova" / "instances" / server.id / "disk.config"
    assert config_drive.exists()
    conn = tenant.conn
    conn.network.remove_interface_from_router(router_id, subnet_id=subnet)  # type: ignore[call-arg]
    conn.network.update_router(router_id, external_gateway_info={})
    conn.network.delete_router(router_id)
    wait_for(lambda: box.router(router_id) is None, 180, "the router forgotten")
    admin = box.bed.connect("astara-admin")
    wait_for(lambda: not box.servers_of(router_id), 120, "its server deleted")
    assert list(admin.network.ports(tags=f"astara-instance:{instance}")) == []
    wait_for(lambda: not config_drive.parent.exists(), 60, "its config drive gone")


def test_a_boot_nova_refuses_puts_the_router_in_error_with_novas_reason(
    box: NovaBox, tenant: Tenant
) -> None:
    admin = box.bed.connect("astara-admin")
    service = box.bed.connect("astara-service")
    project = service.current_project_id
    before = admin.get_compute_quotas(project).instances
    # No server at all: whatever the housekeeping deletes meanwhile, the next boot is refused.
    admin.set_compute_quotas(project, instances=0)
    try:
        _, subnet = tenant.network(f"10.71.{5 + uuid.uuid4().int % 100}.0/24")
        router_id = tenant.router(subnet, gateway=False)

        def in_error() -> bool:
            record = box.router(router_id)
            return record is not None and record.state == "error"

        wait_for(in_error, 180, "ERROR")
        record = box.router(router_id)
        assert record is not None and record.last_error is not None
        assert "Quota exceeded for instances" in record.last_error
        # The store says ERROR a moment before Neutron is told.
        wait_for(
            lambda: tenant.conn.network.get_router(router_id).status == "ERROR",
            30,
            "ERROR in Neutron",
        )
        assert box.servers_of(router_id) == []
        log = Path(box.orchestrator.log).read_text()
        assert f"router {router_id}: boot failed" in log and "Quota exceeded" in log
    finally:
        admin.set_compute_quotas(project, instances=before)
    conn: openstack.connection.Connection = tenant.conn
    conn.network.remove_interface_from_router(router_id, subnet_id=subnet)  # type: ignore[call-arg]
    conn.network.delete_router(router_id)


def _pool(box: NovaBox) -> list[tuple[str, str]]:
    """The warm pool's (instance id, server status)."""
    service = box.bed.connect("astara-service")
    return [
        (next(t.removeprefix("astara-instance:") for t in s.tags if "instance:" in t), s.status)
        for s in service.compute.servers(tags="astara-pool")
    ]


def _answers(box: NovaBox, instance_id: str) -> bool:
    """The pooled appliance's API accepts connections on the management network."""
    admin = box.bed.connect("astara-admin")
    ports = list(admin.network.ports(tags=f"astara-instance:{instance_id},astara-kind:management"))
    if not ports:
        return False
    address = ports[0].fixed_ips[0]["ip_address"]
    try:
        socket.create_connection((address, API_PORT), timeout=2).close()
    except OSError:
        return False
    return True


def test_a_new_router_takes_a_server_from_the_warm_pool_which_is_refilled_and_drained(
    box: NovaBox, tenant: Tenant
) -> None:
    box.restart(pool_size=1)
    try:
        wait_for(lambda: len(_pool(box)) == 1, 120, "a pooled server", 2)
        ((pooled, _),) = _pool(box)
        wait_for(lambda: _answers(box, pooled), 400, "the pooled appliance answering", 2)
        _, subnet = tenant.network("10.71.6.0/24")
        started = time.monotonic()
        router_id = tenant.router(subnet, gateway=False)
        box.wait_active(router_id, 120)
        served_in = time.monotonic() - started
        assert _instance(box, router_id) == pooled
        assert served_in < 45, f"served from the pool in {served_in:.1f} s"  # cold: over 60
        wait_for(lambda: [i for i, _ in _pool(box)] not in ([], [pooled]), 120, "the refill", 2)
    finally:
        box.restart(pool_size=0)
    # Without a pool: the pooled servers are deleted (as on an image or flavor change).
    try:
        wait_for(lambda: _pool(box) == [], 300, "the pool drained", 2)
    except TopologyError as error:
        said = [line for line in box.orchestrator.log.read_text().splitlines() if "pool" in line]
        left = _pool(box)
        raise AssertionError(f"{error}: left {left}; the orchestrator said {said[-8:]}") from error
    assert box.router(router_id) is not None  # the router's own server stays
    assert len(box.servers_of(router_id)) == 1
