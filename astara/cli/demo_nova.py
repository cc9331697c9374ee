"""``astara-demo up --provider nova``: the whole cloud, with appliances and workloads as Nova VMs.

Brings up the OpenStack bed (Keystone, Glance, Placement, Nova on libvirt/QEMU, Neutron with
ML2/OVS and Astara's plugin), builds and uploads the appliance image, starts the orchestrator
with the Nova provider, then builds the demo tenant (two networks, a router with a gateway and
both interfaces, a VM on each, a floating IP) and runs the same five packet checks as the
default demo. Everything stays up; ``astara-demo down --provider nova`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openstack

from astara.cli.checks import Check, timed, until
from astara.testing import services
from astara.testing.nova_box import (
    OUTSIDE_ECHO_PORT,
    WORKLOAD_IMAGE,
    NovaBox,
    Tenant,
    build_image,
    upload_built_image,
)
from astara.testing.openstack_bed.bed import OpenStackBed
from astara.testing.openstack_bed.host import OUTSIDE_NS

STATE = Path("/var/lib/astara/demo-nova")
OUTSIDE_GATEWAY = "172.24.4.1"


def _box() -> NovaBox:
    return NovaBox(OpenStackBed(), STATE)


def _echo_pid_file() -> Path:
    return STATE / "echo.pid"


def _start_echo() -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE_NS, sys.executable, "-m", "astara.testing.echo",
         "--name", "outside", "--port", str(OUTSIDE_ECHO_PORT)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    _echo_pid_file().write_text(str(proc.pid))


def _stop_echo() -> None:
    with contextlib.suppress(OSError, ValueError):
        os.killpg(int(_echo_pid_file().read_text()), signal.SIGTERM)
    _echo_pid_file().unlink(missing_ok=True)


def clear_project(conn: openstack.connection.Connection) -> None:
    """Remove what an earlier demo made in the demo project (servers, IPs, routers, networks).
    What the tenant may not delete (Astara's service ports) goes with its router."""
    with contextlib.suppress(openstack.exceptions.SDKException):
        _clear_project(conn)


def _clear_project(conn: openstack.connection.Connection) -> None:
    servers = list(conn.compute.servers())
    for server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for server in servers:
        conn.compute.wait_for_delete(server, interval=1, wait=180)
    for fip in conn.network.ips(project_id=conn.current_project_id):
        conn.network.delete_ip(fip, ignore_missing=True)
    for router in conn.network.routers(project_id=conn.current_project_id):
        for port in conn.network.ports(
            device_id=router.id, device_owner="network:router_interface"
        ):
            for fixed in port.fixed_ips:
                conn.network.remove_interface_from_router(router, subnet_id=fixed["subnet_id"])  # type: ignore[call-arg]
        conn.network.delete_router(router, ignore_missing=True)
    for network in conn.network.networks(project_id=conn.current_project_id):
        for port in conn.network.ports(network_id=network.id):
            conn.network.delete_port(port, ignore_missing=True)
        conn.network.delete_network(network, ignore_missing=True)


def down() -> int:
    box = _box()
    box.down()
    _stop_echo()
    box.bed.down()  # every server, port and database with it
    print("demo removed: orchestrator stopped, the OpenStack bed down")
    return 0


def up() -> int:
    box = _box()
    bed = box.bed
    print("Astara on Nova: the OpenStack bed, appliances and workloads as Nova VMs", flush=True)
    STATE.mkdir(parents=True, exist_ok=True)
    try:
        timed("services (RabbitMQ, MariaDB, Redis)", services.ensure_all)
        timed("OpenStack bed (Keystone, Glance, Placement, Nova, Neutron)", bed.up)
        box.down()
        _stop_echo()
        timed("clearing an earlier demo", lambda: clear_project(bed.connect("demo-member")))
        timed("appliance image, management port, astara-orchestrator", box.up)
        image = timed(
            "workload image",
            lambda: upload_built_image(
                bed.connect("astara-admin"), build_image("workload"), WORKLOAD_IMAGE
            ),
        )
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _start_echo()
    tenant = Tenant(bed, image)
    net_a, sub_a = timed("tenant network A 10.21.0.0/24", lambda: tenant.network("10.21.0.0/24"))
    net_b, sub_b = timed("tenant network B 10.22.0.0/24", lambda: tenant.network("10.22.0.0/24"))
    router_id = timed(
        "router with a gateway and two interfaces", lambda: tenant.router(sub_a, sub_b)
    )
    started = time.monotonic()
    vm_a = timed("vm-a (Nova server, floating IP)", lambda: tenant.vm(net_a, floating=True))
    vm_b = timed("vm-b (Nova server)", lambda: tenant.vm(net_b))
    print(f"Router {router_id}; checking with real packets:", flush=True)

    def lease(vm_name: str, vm_ip: str, server_id: str) -> str | None:
        console = tenant.conn.compute.get_server_console_output(server_id)["output"]
        return f"{vm_name} got {vm_ip}" if f"dhcp eth0 {vm_ip}/" in console else None

    def via_agent(what: str, argument: str, expect: str) -> str | None:
        answer = tenant.ask(vm_a, what, argument, timeout=10)
        return answer.strip() if answer and expect in answer else None

    def snat() -> str | None:
        echo = f"{OUTSIDE_GATEWAY}:{OUTSIDE_ECHO_PORT}"
        answer = tenant.ask_through(vm_a, vm_b, "outside", echo)
        return f"vm-b seen as {answer.split()[-1]}" if answer and "outside" in answer else None

    checks: list[Check] = [
        until("DHCP: vm-a leases its Neutron address",
              lambda: lease("vm-a", vm_a.fixed_ip, vm_a.server_id), 400),
        until("DHCP: vm-b leases its Neutron address",
              lambda: lease("vm-b", vm_b.fixed_ip, vm_b.server_id), 200),
        until(f"floating IP {vm_a.floating_ip} reachable from outside",
              lambda: via_agent("ping", "127.0.0.1", "ok"), 300),
        until("routing: vm-a reaches vm-b", lambda: via_agent("ping", vm_b.fixed_ip, "ok"), 60),
        until("SNAT: vm-b (no floating IP) reaches the outside", snat, 60),
    ]  # fmt: skip
    total = time.monotonic() - started
    passed = sum(check.ok for check in checks)
    print(f"{passed} of {len(checks)} checks passed, {total:.1f} s from the first VM.")
    print(
        f"Orchestrator log: {box.orchestrator.log}; clouds.yaml: {bed.clouds_yaml} (cloud "
        "demo-member is the tenant, astara-admin the admin); remove everything: "
        "astara-demo down --provider nova"
    )
    return 0 if passed == len(checks) else 1
