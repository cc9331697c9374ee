"""astara-demo: the local cloud-in-a-box, and a demo topology checked with real packets.

``astara-demo`` (or ``astara-demo up``) brings up RabbitMQ, MariaDB and Redis, a real
neutron-server, and astara-orchestrator with the netns provider; then it builds two tenant
networks, a router with an external gateway, two workloads and a floating IP through the
Neutron API, and prints, with timings, what works. Everything stays up for a look around;
``astara-demo down`` removes it all. Running ``up`` again starts afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from astara.cli import demo_nova
from astara.cli.checks import timed, until
from astara.testing import services
from astara.testing.chaos import fresh_state
from astara.testing.cloud import CloudInABox, Workload
from astara.testing.netns import Namespace
from astara.testing.neutron_bed import NeutronTestbed, TestbedError, connect
from astara.testing.neutron_objects import external_network, tenant_network

T = TypeVar("T")
STATE = Path("/var/lib/astara/demo")
CLOUDS_YAML = STATE / "clouds.yaml"
OPENSTACK = Path(sys.executable).with_name("openstack")
UPLINK_IP = "172.24.8.1"
ECHO_PORT = 7000
METRICS_PORT = 9412  # the demo's Prometheus metrics on 127.0.0.1


def cloud() -> CloudInABox:
    bed = NeutronTestbed(
        state_dir=STATE / "neutron", database="astara_neutron_demo", astara_plugin=True
    )
    return CloudInABox(state_dir=STATE, bed=bed, metrics_port=METRICS_PORT)


def clear(box: CloudInABox) -> None:
    """Stop what an earlier demo left and forget its state: every run starts afresh."""
    box.down()
    fresh_state(box)


def down() -> int:
    box = cloud()
    box.down()
    print("demo removed: orchestrator, appliances, workloads and neutron-server stopped")
    return 0


def up() -> int:
    box = cloud()
    print("Astara cloud-in-a-box", flush=True)
    try:
        timed("services (RabbitMQ, MariaDB, Redis)", services.ensure_all)
        timed("clearing an earlier demo", lambda: clear(box))
        endpoint = timed("neutron-server and astara-orchestrator", box.up)
    except (TestbedError, services.ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sdk = connect(endpoint.url)
    project = "demo"

    def network(name: str, cidr: str) -> tuple[str, str]:
        net, sub = tenant_network(sdk, project, name, cidr)
        return str(net.id), str(sub.id)

    net_a, sub_a = timed("tenant network A 10.11.0.0/24", lambda: network("a", "10.11.0.0/24"))
    net_b, sub_b = timed("tenant network B 10.12.0.0/24", lambda: network("b", "10.12.0.0/24"))

    def external() -> str:
        ext = external_network(sdk, project, "public", "172.24.8.0/24", UPLINK_IP, "public")
        return str(ext.id)

    public = timed("external network 172.24.8.0/24", external)
    outside = box.uplink(public, f"{UPLINK_IP}/24")
    echo = [sys.executable, "-m", "astara.testing.echo", "--port", str(ECHO_PORT)]
    box.spawn(outside, [*echo, "--name", "outside"])

    def router() -> str:
        rtr = sdk.network.create_router(
            name="demo", project_id=project, external_gateway_info={"network_id": public}
        )
        sdk.network.add_interface_to_router(rtr, subnet=sub_a)
        sdk.network.add_interface_to_router(rtr, subnet=sub_b)
        return str(rtr.id)

    router_id = timed("router with a gateway and two interfaces", router)
    started = time.monotonic()
    ports = {
        name: sdk.network.create_port(network_id=net, project_id=project, name=f"vm-{name}")
        for name, net in (("a", net_a), ("b", net_b))
    }
    vms: dict[str, Workload] = {
        name: box.workload(port.network_id, port.mac_address) for name, port in ports.items()
    }
    for name, vm in vms.items():
        box.spawn(vm.namespace, [*echo, "--name", f"vm-{name}"])
    print(f"Router {router_id}; checking with real packets:", flush=True)

    def lease(name: str) -> str | None:
        got = box.dhcp(vms[name], timeout=3)
        want = ports[name].fixed_ips[0]["ip_address"]
        return f"vm-{name} got {got.ip}" if str(got.ip) == want else None

    def reaches(source: Namespace, host: str) -> str | None:
        who, seen_as = ask_from(source, host)
        return f"{who} answered, saw us as {seen_as}"

    ip_b = ports["b"].fixed_ips[0]["ip_address"]
    checks = [
        until("DHCP: vm-a leases its Neutron address", lambda: lease("a"), 120),
        until("DHCP: vm-b leases its Neutron address", lambda: lease("b"), 60),
        until("routing: vm-a reaches vm-b", lambda: reaches(vms["a"].namespace, ip_b), 30),
        until("SNAT: vm-a reaches the outside", lambda: reaches(vms["a"].namespace, UPLINK_IP), 30),
    ]
    fip = sdk.network.create_ip(
        floating_network_id=public, port_id=ports["a"].id, project_id=project
    )
    address = str(fip.floating_ip_address)
    checks.append(
        until(
            f"floating IP {address} reachable from outside", lambda: reaches(outside, address), 30
        )
    )
    write_clouds_yaml(box)
    checks.append(
        until(
            "operators: openstack astara router list shows it",
            lambda: operator_sees(router_id),
            30,
        )
    )
    total = time.monotonic() - started
    passed = sum(check.ok for check in checks)
    print(f"{passed} of {len(checks)} checks passed, {total:.1f} s from the first VM port.")
    print(f"Orchestrator log: {box.orchestrator_log}; remove everything: astara-demo down")
    print_operator_help(box, router_id)
    return 0 if passed == len(checks) else 1


def write_clouds_yaml(box: CloudInABox) -> None:
    """The demo's management API for ``openstack --os-cloud astara-demo`` (no Keystone in the
    demo: its API runs with auth_strategy = noauth)."""
    cloud = {"auth_type": "none", "auth": {"endpoint": box.api_url}}
    CLOUDS_YAML.write_text(json.dumps({"clouds": {"astara-demo": cloud}}, indent=1))


def operator_sees(router_id: str) -> str | None:
    listed = subprocess.run(
        [str(OPENSTACK), "--os-cloud", "astara-demo", "astara", "router", "list", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(CLOUDS_YAML)},
        check=True,
    )
    states = {r["ID"]: r["State"] for r in json.loads(listed.stdout)}
    return f"router {states[router_id]}" if states.get(router_id) == "active" else None


def print_operator_help(box: CloudInABox, router_id: str) -> None:
    print(
        f"""
Operator commands (the management API at {box.api_url}; the demo runs it without Keystone):
  export OS_CLIENT_CONFIG_FILE={CLOUDS_YAML} OS_CLOUD=astara-demo
  {OPENSTACK} astara router list
  {OPENSTACK} astara router show {router_id}
  {OPENSTACK} astara router rebuild {router_id}
  {OPENSTACK} astara router poll {router_id}
  {OPENSTACK} astara router unmanage {router_id}   (and: router manage)
  {OPENSTACK} astara router debug {router_id}      (and: project debug demo)
  {OPENSTACK} astara instance list; worker list; event list; breaker show
Metrics: curl http://127.0.0.1:{box.metrics_port}/metrics""",
        flush=True,
    )


def ask_from(source: Namespace, host: str) -> tuple[str, str]:
    argv = [sys.executable, "-m", "astara.testing.echo", "--ask", host, "--port", str(ECHO_PORT)]
    who, seen_as = source.run(argv, timeout=10).stdout.split()
    return who, seen_as


def vm(network: str) -> int:
    """A workload on a network of the running demo cloud: a Neutron port, DHCP'd by Astara."""
    box = cloud()
    endpoint = box.bed.status()
    if endpoint is None:
        print(
            "error: the demo cloud is not running; start it with: astara-demo up", file=sys.stderr
        )
        return 1
    sdk = connect(endpoint.url)
    net = sdk.network.find_network(network)
    if net is None:
        print(f"error: no network {network!r}; see: openstack network list", file=sys.stderr)
        return 1
    port = sdk.network.create_port(network_id=net.id, project_id=net.project_id, name="vm")
    workload = box.workload(net.id, port.mac_address)
    address = box.dhcp(workload, timeout=10)
    print(f"VM {workload.namespace.name}: port {port.id}, {address} by DHCP")
    print(f"Try: ip netns exec {workload.namespace.name} ping -c1 {UPLINK_IP}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="astara-demo",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    provider_help = (
        "netns (default): appliances in network namespaces, a neutron-server alone, "
        "workloads in namespaces (about a minute); nova: the whole OpenStack bed, appliances "
        "and workloads as Nova VMs under QEMU (first run 10 to 15 minutes: venvs and images "
        "are built and cached; then about 5)"
    )
    for action, text in (
        ("up", "(default) bring up the cloud, build the demo, check it"),
        ("down", "remove everything the demo started"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument(
            "--provider", choices=("netns", "nova"), default="netns", help=provider_help
        )
    start_vm = actions.add_parser(
        "vm", help="start one more workload on a network of the running demo (e.g. a, b)"
    )
    start_vm.add_argument("network", help="Neutron network name or id")
    args = parser.parse_args(argv)
    if getattr(args, "provider", "netns") == "nova":
        return demo_nova.down() if args.action == "down" else demo_nova.up()
    if args.action == "down":
        return down()
    if args.action == "vm":
        return vm(args.network)
    return up()


if __name__ == "__main__":
    sys.exit(main())
