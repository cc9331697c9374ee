"""astara-demo: the local cloud-in-a-box.

Until the orchestrator lands, the demo brings up the real Neutron test bed and builds the demo
topology in it (two tenant networks, a router with an external gateway, a floating IP), printing
each step with its timing. The orchestrator issue extends it with appliances and real packets.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from astara.testing import services
from astara.testing.neutron_bed import NeutronTestbed, TestbedError, connect

T = TypeVar("T")


def timed(label: str, action: Callable[[], T]) -> T:
    started = time.monotonic()
    result = action()
    print(f"  {label:<48} {time.monotonic() - started:6.2f} s", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="astara-demo",
        description="Bring up the local cloud-in-a-box and build a demo topology in it.",
    )
    parser.parse_args(argv)
    print("Astara cloud-in-a-box", flush=True)
    try:
        timed("services (RabbitMQ, MariaDB, Redis)", services.ensure_all)
        endpoint = timed("real neutron-server 29.0.0", NeutronTestbed().up)
    except (TestbedError, services.ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sdk = connect(endpoint.url)
    project = uuid.uuid4().hex
    print(f"Neutron API: {endpoint.url}   project: {project}", flush=True)

    def network(name: str, cidr: str) -> tuple[str, str]:
        net = sdk.network.create_network(name=name, project_id=project)
        sub = sdk.network.create_subnet(
            network_id=net.id, cidr=cidr, ip_version=4, project_id=project, name=name + "-v4"
        )
        return net.id, sub.id

    net_a, sub_a = timed("tenant network A 10.11.0.0/24", lambda: network("demo-a", "10.11.0.0/24"))
    _, sub_b = timed("tenant network B 10.12.0.0/24", lambda: network("demo-b", "10.12.0.0/24"))

    def external() -> str:
        ext = sdk.network.create_network(
            name="demo-public-" + project[:6],
            project_id=project,
            is_router_external=True,
            provider_network_type="flat",
            provider_physical_network="demo-" + project[:6],
        )
        sdk.network.create_subnet(
            network_id=ext.id, cidr="172.24.8.0/24", ip_version=4, project_id=project
        )
        return str(ext.id)

    public = timed("external network 172.24.8.0/24", external)

    def router() -> str:
        rtr = sdk.network.create_router(
            name="demo-router", project_id=project, external_gateway_info={"network_id": public}
        )
        sdk.network.add_interface_to_router(rtr, subnet=sub_a)
        sdk.network.add_interface_to_router(rtr, subnet=sub_b)
        return str(rtr.id)

    router_id = timed("router with gateway and two interfaces", router)

    def floating_ip() -> str:
        port = sdk.network.create_port(network_id=net_a, project_id=project, name="vm-a")
        fip = sdk.network.create_ip(floating_network_id=public, port_id=port.id, project_id=project)
        return f"{fip.floating_ip_address} -> {fip.fixed_ip_address}"

    mapping = timed("floating IP for a port on network A", floating_ip)
    rtr = sdk.network.get_router(router_id)
    print(f"Router {router_id}: status {rtr.status}, floating IP {mapping}")
    print(
        "Appliances are not booted yet: the orchestrator issue adds them (DHCP, routing, SNAT "
        "and the floating IP checked with real packets)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
