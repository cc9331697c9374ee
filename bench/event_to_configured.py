"""Event to configured: from a Neutron API call returning to the change being live.

    .venv/bin/python bench/event_to_configured.py [--changes 200] [--routers 100]   (as root)

The real cloud-in-a-box (neutron-server, RabbitMQ, astara-orchestrator, netns appliances)
runs under the prefix ``abn``. One router gets ``--changes`` floating-IP changes (associate,
then release, alternately); each is timed from the API call's return until the appliance's
applied configuration (GET /v1/config over mutual TLS, polled every 10 ms) shows it. Then
``--routers`` routers are brought up and, once all are configured and quiet, the
orchestrator's memory (all its processes) and CPU over 60 s of idle are printed.
The last line is the figure: ``event->configured: p50 <s> s, p99 <s> s over <n> changes``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from astara.orchestrator.appliance_client import ApplianceClient
from astara.testing.cloud import CloudInABox
from astara.testing.neutron_bed import NeutronTestbed, connect
from astara.testing.neutron_objects import external_network, tenant_network

STATE = Path("/var/lib/astara/bench-event")
CLK = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW = 60.0  # seconds of idle measured: 20 periodic reconcile steps at 100 routers


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait(check: Callable[[], bool], timeout: float, what: str, every: float = 0.01) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        time.sleep(every)
    return time.monotonic() - started


def group_processes(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                found.append(int(entry))
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--routers", type=int, default=100)
    args = parser.parse_args()

    bed = NeutronTestbed(state_dir=STATE / "neutron", database="astara_neutron_bench")
    # Production defaults for what runs at idle: reconcile every 300 s, heartbeats every 2 s.
    box = CloudInABox(
        state_dir=STATE,
        bed=bed,
        prefix="abn",
        resync_interval=300.0,
        health={"heartbeat_interval": "2"},
    )
    box.down()
    endpoint = box.up()
    sdk = connect(endpoint.url)
    project = "bench"
    try:
        ext = external_network(sdk, project, "ext", "172.30.0.0/16", "172.30.0.1", "bench")
        box.uplink(ext.id, "172.30.0.1/16")

        def router(index: int) -> str:
            owner = project if index == 0 else f"{project}-{index}"  # a router quota is per project
            _, sub = tenant_network(
                sdk, owner, f"n{index}", f"10.{index // 250}.{index % 250}.0/24"
            )
            rtr = sdk.network.create_router(
                name=f"r{index}", project_id=owner, external_gateway_info={"network_id": ext.id}
            )
            sdk.network.add_interface_to_router(rtr, subnet=sub.id)
            return str(rtr.id)

        first = router(0)
        port = sdk.network.create_port(
            network_id=sdk.network.find_network("n0", project_id=project).id, project_id=project
        )
        provider = box.provider()
        creds = STATE / "orchestrator"

        def client() -> ApplianceClient:
            (instance,) = [i for i in provider.list() if i.router_id == first]
            return ApplianceClient(
                instance.management_address, ca=creds / "ca" / "ca.pem",
                cert=creds / "orchestrator-client.pem", key=creds / "orchestrator-client.pem",
            )  # fmt: skip

        def fips() -> set[str]:
            try:
                with client() as c:
                    config = c.get_config()
            except Exception:
                return set()
            return {str(f.floating_ip) for f in config.floating_ips} if config else set()

        say("booting the first router's appliance")
        wait(lambda: bool(provider.list()) and _configured(client), 120, "first appliance", 0.5)
        latencies = []
        fip = None
        for n in range(args.changes):
            if fip is None:
                fip = sdk.network.create_ip(
                    floating_network_id=ext.id, port_id=port.id, project_id=project
                )
                address = fip.floating_ip_address
                latencies.append(wait(lambda a=address: a in fips(), 30, f"change {n}"))
            else:
                address = fip.floating_ip_address
                sdk.network.delete_ip(fip)
                fip = None
                latencies.append(wait(lambda a=address: a not in fips(), 30, f"change {n}"))
            if n % 20 == 19:
                say(f"  {n + 1} changes, median so far {statistics.median(latencies):.3f} s")

        say(f"bringing up {args.routers} routers")
        for index in range(1, args.routers):
            router(index)
        wait(lambda: len(provider.list()) >= args.routers, 900, "instances", 1.0)
        say("  all instances booted; letting them settle")
        time.sleep(60)
        pid = box.orchestrator_pid()
        assert pid is not None
        pids = group_processes(pid)
        before = cpu_ticks(pids)
        time.sleep(IDLE_WINDOW)
        idle_cpu = (cpu_ticks(pids) - before) / CLK / IDLE_WINDOW * 100
        say(
            f"idle with {len(provider.list())} routers: orchestrator ({len(pids)} processes) "
            f"{rss_mib(pids):.0f} MiB RSS, {idle_cpu:.2f}% of a core"
        )
    finally:
        box.down()

    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"event->configured: p50 {p50:.3f} s, p99 {p99:.3f} s over {len(ordered)} changes")
    return 0


def _configured(client: Callable[[], ApplianceClient]) -> bool:
    try:
        with client() as c:
            return c.get_config() is not None
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
