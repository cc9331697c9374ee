"""Failures to inflict on a netns appliance, and a one-router bed to inflict them on.

Shared by the chaos tests (tests/e2e/test_health.py) and the failure benchmark
(bench/failure.py): both build the same bed and break appliances the same four ways.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import openstack

from astara.providers.base import Instance
from astara.testing.cloud import CloudInABox, Workload
from astara.testing.netns import Namespace
from astara.testing.neutron_bed import NeutronTestbed, connect
from astara.testing.neutron_objects import external_network, tenant_network

T = TypeVar("T")


@dataclass
class RouterBed:
    """One router with a gateway, one workload behind it pinging the outside world."""

    cloud: CloudInABox
    sdk: openstack.connection.Connection
    vm: Workload
    router_id: str
    outside_ip: str

    def instances(self) -> list[Instance]:
        return self.cloud.provider().list()

    def instance(self) -> Instance:
        (found,) = self.instances()
        return found

    def appliance_pid(self, instance: Instance) -> int:
        ns = self.cloud.provider().names.instance_ns(instance.id)
        return int((self.cloud.state_dir / "instances" / ns / "appliance.pid").read_text())

    def pings_out(self) -> bool:
        argv = ["ping", "-c", "1", "-W", "1", self.outside_ip]
        return self.vm.namespace.run(argv, check=False).returncode == 0

    def replaced(self, old: Instance) -> bool:
        """One running instance, not ``old``, carrying traffic again."""
        instances = self.instances()
        return (
            len(instances) == 1
            and instances[0].id != old.id
            and instances[0].state == "running"
            and self.pings_out()
        )


def eventually(check: Callable[[], T], timeout: float, what: str) -> T:
    """What ``check`` returns once it is truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # not there yet
            last = exc
        else:
            if result:
                return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s (last error: {last})")


def build_router_bed(cloud: CloudInABox, neutron_url: str, third_octet: int) -> RouterBed:
    """Networks 10.<n>.0.0/24 and 172.24.<n>.0/24 (outside), a router, one DHCP'd workload."""
    sdk, project, n = connect(neutron_url), "chaos", third_octet
    net, sub = tenant_network(sdk, project, "n", f"10.{n}.0.0/24")
    outside_ip = f"172.24.{n}.1"
    ext = external_network(sdk, project, "ext", f"172.24.{n}.0/24", outside_ip, "chaos")
    cloud.uplink(ext.id, f"{outside_ip}/24")
    router = sdk.network.create_router(
        name="r", project_id=project, external_gateway_info={"network_id": ext.id}
    )
    sdk.network.add_interface_to_router(router, subnet=sub.id)
    port = sdk.network.create_port(network_id=net.id, project_id=project)
    vm = cloud.workload(net.id, port.mac_address)
    eventually(lambda: cloud.dhcp(vm, timeout=3), 90, "a DHCP lease")
    bed = RouterBed(cloud, sdk, vm, str(router.id), outside_ip)
    eventually(bed.pings_out, 30, "traffic to the outside")
    return bed


def kill_appliance(bed: RouterBed, instance: Instance) -> None:
    """kill -9 of the appliance process."""
    os.kill(bed.appliance_pid(instance), signal.SIGKILL)


def freeze_appliance(bed: RouterBed, instance: Instance) -> None:
    """SIGSTOP: alive but hung."""
    os.kill(bed.appliance_pid(instance), signal.SIGSTOP)


def delete_namespace(bed: RouterBed, instance: Instance) -> None:
    """The whole instance gone: its processes and its namespace."""
    ns = bed.cloud.provider().names.instance_ns(instance.id)
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", ns], check=True)


def cut_management_link(bed: RouterBed, instance: Instance) -> None:
    """The management link down: the appliance lives but the orchestrator cannot reach it."""
    provider = bed.cloud.provider()
    management = next(p for p in instance.ports if p.kind == "management")
    link = provider.names.port_fabric_link(management.port_id)
    Namespace(provider.names.fabric_ns).run(["ip", "link", "set", link, "down"])


def starve_appliance(bed: RouterBed, instance: Instance, seconds: float) -> None:
    """No CPU at all for ``seconds`` (SIGSTOP, then SIGCONT): the worst a busy host does to a
    healthy appliance. A CPU quota would let the heartbeat thread slip through now and then;
    this stops every beat for the whole stall."""
    pid = bed.appliance_pid(instance)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


FAILURES: dict[str, Callable[[RouterBed, Instance], None]] = {
    "kill": kill_appliance,
    "freeze": freeze_appliance,
    "delete-namespace": delete_namespace,
    "cut-management": cut_management_link,
}


def fresh_state(cloud: CloudInABox) -> None:
    """Remove what an earlier run under the same state directory left."""
    if cloud.state_dir.exists():
        cloud.provider().teardown()
        shutil.rmtree(cloud.state_dir / "instances", ignore_errors=True)
        (cloud.state_dir / "orchestrator.sqlite").unlink(missing_ok=True)


@contextlib.contextmanager
def plugin_cloud(
    state_dir: Path, database: str, prefix: str
) -> Iterator[tuple[CloudInABox, openstack.connection.Connection]]:
    """A cloud-in-a-box whose Neutron loads Astara's plugin (and neutron-dynamic-routing's
    API), started from a clean state, and an SDK connection to it; brought down after."""
    bed = NeutronTestbed(state_dir=state_dir / "neutron", database=database, astara_plugin=True)
    cloud = CloudInABox(state_dir=state_dir, bed=bed, prefix=prefix)
    fresh_state(cloud)
    endpoint = cloud.up()
    try:
        yield cloud, connect(endpoint.url)
    finally:
        cloud.down()


def instance_namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    shared = (f"{prefix}-fabric", f"{prefix}-uplink")
    return [
        line.split()[0]
        for line in listed.splitlines()
        if line.startswith(f"{prefix}-") and line.split()[0] not in shared
    ]
