"""Router to configured on Nova: how long a new router waits for its appliance VM.

    .venv/bin/python bench/nova_boot.py [--routers 10] [--pool 3] [--replace 3] [--peer 3]

On the OpenStack bed (brought up if it is not; it is left up), with astara-orchestrator and
the Nova provider (the production code path: Neutron API -> plugin event -> worker -> Nova
server from the appliance image -> configuration over mutual TLS):

* cold: ``--routers`` routers, two created at a time, half of them friendly (one interface)
  and half hard (a gateway, three interfaces and a floating IP each); each is timed from
  the Neutron call's return to the router's generation applied (the store says ACTIVE);
* warm: the orchestrator restarted with a warm pool of ``--pool`` servers; once the pool is
  ready, as many routers, one at a time, each timed the same way;
* replace: ``--replace`` appliances destroyed behind Astara's back (``virsh destroy``), each
  timed from the destroy to the router ACTIVE on a new server;
* the peer's way: the same appliance image booted as a plain Nova server with its config
  drive, no orchestrator involved (what an Octavia amphora or any VM-per-service design
  waits for at least), timed from the create call to its API accepting connections,
  ``--peer`` times.

Under QEMU without KVM (this machine) a cold boot is CPU-bound: the figures are the
machine's, not the design's (see the README). The last line is the figure:
``nova: router->configured p50 <s> s, p99 <s> s over <n> routers; warm p50 <s> s;
replace p99 <s> s``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from astara.common.tls import CertificateAuthority
from astara.providers.base import InstanceSpec, PortSpec, ProviderContext
from astara.providers.nova import NovaProvider, NovaSettings
from astara.providers.nova_cloud import SdkCloud
from astara.testing import services
from astara.testing.nova_box import NovaBox, Tenant, build_image, upload_built_image
from astara.testing.openstack_bed import operator
from astara.testing.openstack_bed.bed import OpenStackBed
from astara.wire.defaults import API_PORT

STATE = Path("/var/lib/astara/bench-nova")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name}: p50 {statistics.median(values):.1f} s, p99 {p(values, 0.99):.1f} s "
        f"over {len(values)}"
    )


def router_to_configured(box: NovaBox, tenant: Tenant, index: int, hard: bool) -> float:
    subnets = []
    for k in range(3 if hard else 1):
        subnets.append(tenant.network(f"10.{80 + index % 40}.{k}.0/24")[1])
    started = time.monotonic()
    router_id = tenant.router(*subnets, gateway=hard)
    if hard:
        net = tenant.conn.network.get_subnet(subnets[0]).network_id
        port = tenant.conn.network.create_port(network_id=net)
        tenant.made.append(("port", port.id))
        external = tenant.bed.info().external["network_id"]  # type: ignore[union-attr]
        fip = tenant.conn.network.create_ip(floating_network_id=external, port_id=port.id)
        tenant.made.append(("floatingip", fip.id))
    box.wait_active(router_id, 900)
    return time.monotonic() - started


def peer_boot(box: NovaBox) -> float:
    """The appliance image as a plain Nova server with its config drive (no orchestrator
    running): create -> its API accepting TCP on the management network."""
    ca = CertificateAuthority.load_or_create(STATE / "peer-ca")
    settings = NovaSettings(
        str(box.info.management["network_id"]),
        box.info.management["subnet_id"],
        image=box.image_id,
        flavor=operator.APPLIANCE_FLAVOR,
    )
    nova = NovaProvider(SdkCloud(box.bed.connect("astara-service")), settings, ProviderContext(ca))
    instance_id = str(uuid.uuid4())
    management = PortSpec(
        port_id="peer", network_id="management", mac="02:00:00:00:00:01", kind="management"
    )
    started = time.monotonic()
    booted = nova.boot(
        InstanceSpec(instance_id=instance_id, router_id=instance_id, ports=(management,))
    )
    try:
        while True:
            try:
                socket.create_connection((booted.management_address, API_PORT), timeout=2).close()
                return time.monotonic() - started
            except OSError:
                if time.monotonic() - started > 600:
                    raise TimeoutError("the plain server never answered") from None
                time.sleep(0.5)
    finally:
        nova.delete(instance_id)


def replace_once(box: NovaBox, router_id: str) -> float:
    (server,) = box.servers_of(router_id)
    admin = box.bed.connect("astara-admin")
    domain = admin.compute.get_server(server.id).instance_name
    (old,) = box.store().instances(router_id)
    started = time.monotonic()
    subprocess.run(["virsh", "destroy", domain], check=True, capture_output=True)
    while True:  # one instance, not the old one, ACTIVE: the replacement took over
        record, now = box.router(router_id), box.store().instances(router_id)
        ids = [i.id for i in now]
        if record and record.state == "active" and len(ids) == 1 and ids != [old.id]:
            return time.monotonic() - started
        if time.monotonic() - started > 900:
            raise TimeoutError(f"router {router_id} not replaced")
        time.sleep(0.5)


def wait_pool(box: NovaBox, size: int) -> None:
    conn = box.bed.connect("astara-service")
    deadline = time.monotonic() + 900
    while True:
        ready = [s for s in conn.compute.servers(tags="astara-pool") if s.status == "ACTIVE"]
        if len(ready) >= size:
            time.sleep(60)  # ACTIVE in Nova; give the appliances time to boot too
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the warm pool never filled")
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", type=int, default=10, help="cold routers (default 10)")
    parser.add_argument("--pool", type=int, default=3, help="warm pool size (default 3)")
    parser.add_argument("--replace", type=int, default=3, help="replacements (default 3)")
    parser.add_argument("--peer", type=int, default=3, help="plain Nova boots (default 3)")
    args = parser.parse_args()
    services.ensure_all()
    bed = OpenStackBed()
    bed.up()
    box = NovaBox(bed, STATE, boot_timeout=600)
    box.down()
    box.up()
    box.down()  # the peer's servers are no router's: the housekeeping would remove them
    admin = bed.connect("astara-admin")
    tenant = Tenant(bed, upload_built_image(admin, build_image("workload"), "astara-test-workload"))
    # Neutron's default of 10 routers a project: the cold routers and the warm ones are more.
    admin.set_network_quotas(tenant.conn.current_project_id, router=-1)
    try:
        say("peer: the appliance image as plain Nova servers")
        peer = [peer_boot(box) for _ in range(args.peer)]
        say(summary("peer (plain Nova server of the image, create -> API answers)", peer))
        box.start()
        say(f"cold: {args.routers} routers, two at a time")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(router_to_configured, box, tenant, i, hard=i % 2 == 1)
                for i in range(args.routers)
            ]
            cold = [job.result() for job in jobs]
        friendly, hard = cold[0::2], cold[1::2]
        say(summary("cold, friendly (one interface)", friendly))
        say(summary("cold, hard (gateway, three interfaces, a floating IP)", hard))
        routers = [rid for kind, rid in tenant.made if kind == "router"]
        say(f"replace: {args.replace} appliances destroyed with virsh")
        replaced = [replace_once(box, rid) for rid in routers[: args.replace]]
        say(summary("replace", replaced))
        say(f"warm: a pool of {args.pool}")
        box.restart(pool_size=args.pool)
        wait_pool(box, args.pool)
        warm = [router_to_configured(box, tenant, 100 + i, hard=False) for i in range(args.pool)]
        say(summary("warm", warm))
    finally:
        tenant.cleanup()
        box.restart(pool_size=0)  # drains the pool
        time.sleep(box.housekeeping_interval * 2)
        box.down()
    print(
        f"nova: router->configured p50 {statistics.median(cold):.1f} s, "
        f"p99 {p(cold, 0.99):.1f} s over {len(cold)} routers; "
        f"warm p50 {statistics.median(warm):.1f} s; replace p99 {p(replaced, 0.99):.1f} s"
    )
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
