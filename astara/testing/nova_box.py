"""Astara on the OpenStack bed: the orchestrator with the Nova provider, and tenants' clouds.

``NovaBox`` does what an operator does once (build and upload the appliance image, give this
host its management port) and runs an orchestrator configured for Nova. ``Tenant`` does what a
tenant does (networks, a router with a gateway, servers from the workload image, floating
IPs). Every workload server runs a tiny HTTP agent (busybox httpd, from its user data) that
tests drive through the server's floating IP from the bed's outside namespace: "ping this",
"fetch your metadata", "fetch it claiming to be someone else", "connect to the outside",
"fetch this URL" (to ask a server without a floating IP through one that has one).

Used by tests/nova, ``astara-demo up --provider nova`` and bench/nova_boot.py.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import openstack

from astara.orchestrator.local_port import (
    ManagementSettings,
    OvsInterfaceDriver,
    ensure_local_port,
)
from astara.orchestrator.store import RouterRecord, Store
from astara.testing.netns import TopologyError, wait_for
from astara.testing.neutron_bed import free_port
from astara.testing.openstack_bed import operator
from astara.testing.openstack_bed.bed import BedInfo, OpenStackBed
from astara.testing.openstack_bed.host import Outside
from astara.testing.orchestrator import OrchestratorProcess, write_ini

APPLIANCE_IMAGE = "astara-appliance"
APPLIANCE_TAG = "astara-appliance"
WORKLOAD_IMAGE = "astara-test-workload"
OUTSIDE_ECHO_PORT = 7000

# The workload's agent: CGI scripts answering over busybox httpd on port 80. busybox wget has
# no timeout option: each fetch runs under timeout.
AGENT = r"""#!/bin/sh
mkdir -p /www/cgi-bin
cgi() {
  printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\n%s\n' "$2" > /www/cgi-bin/$1
  chmod +x /www/cgi-bin/$1
}
META=http://169.254.169.254/openstack/latest/meta_data.json
cgi ping 'ping -c 2 -W 2 "$QUERY_STRING" >/dev/null 2>&1 && echo ok || echo fail'
cgi meta "timeout 15 wget -q -O - $META"
cgi forged "timeout 15 wget -q -O - --header \"X-Instance-ID: \$QUERY_STRING\" \
 --header 'X-Tenant-ID: someone' --header 'X-Instance-ID-Signature: 00' \
 --header 'X-Forwarded-For: 10.9.9.9' $META"
cgi outside 'echo | timeout 5 nc ${QUERY_STRING%:*} ${QUERY_STRING#*:}'
cgi fetch 'timeout 20 wget -q -O - "http://$(httpd -d "$QUERY_STRING")"'
httpd -p 80 -h /www
echo ASTARA-AGENT-READY
"""


def build_image(profile: str) -> Path:
    """``astara-image build --profile PROFILE`` of this checkout (cached): the qcow2's path."""
    built = subprocess.run(
        [sys.executable, "-m", "astara.cli.image", "build", "--profile", profile],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(
            f"astara-image build --profile {profile} failed: {built.stderr.strip()[-2000:]}"
        )
    return Path(built.stdout.split()[-1])


def upload_built_image(
    conn: openstack.connection.Connection, path: Path, name: str, tags: tuple[str, ...] = ()
) -> str:
    """Upload an image astara-image built, with the Glance properties of its sidecar."""
    sidecar = json.loads(path.with_suffix(".json").read_text())
    return operator.upload_image(conn, path, name, sidecar.get("properties"), tags)


@dataclass
class NovaBox:
    bed: OpenStackBed
    state_dir: Path
    pool_size: int = 0
    boot_timeout: float = 240.0
    housekeeping_interval: float = 10.0
    api_port: int = 0
    image_id: str = ""
    host_address: str = ""

    @property
    def info(self) -> BedInfo:
        info = self.bed.info()
        if info is None:
            raise RuntimeError("the OpenStack bed is not up: astara-testbed --cloud openstack up")
        return info

    @property
    def orchestrator(self) -> OrchestratorProcess:
        return OrchestratorProcess(
            self.state_dir, {"OS_CLIENT_CONFIG_FILE": str(self.bed.clouds_yaml)}
        )

    def store(self) -> Store:
        return Store(f"sqlite:///{self.state_dir / 'orchestrator.sqlite'}")

    def up(self) -> None:
        """Image uploaded, this host's management port wired, the orchestrator running."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        admin = self.bed.connect("astara-admin")
        self.image_id = upload_built_image(
            admin, build_image("appliance"), APPLIANCE_IMAGE, (APPLIANCE_TAG,)
        )
        service = self.bed.connect("astara-service")
        # What the orchestrator does at start, done first: the metadata URL needs the address.
        port = ensure_local_port(service.network, OvsInterfaceDriver(), self.management())
        self.host_address = str(ipaddress.ip_interface(port.addresses[0]).ip)
        self.write_config()
        self.start()

    def start(self) -> None:
        """Start the orchestrator and wait until it serves (its store is migrated by then)."""
        self.orchestrator.start()
        wait_for(self._serves, 120, "astara-orchestrator's management API", 0.5)

    def restart(self, pool_size: int) -> None:
        """The orchestrator again, with a warm pool of ``pool_size`` servers."""
        self.down()
        self.pool_size = pool_size
        self.write_config()
        self.start()

    def _serves(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/", timeout=2):
                return True
        except OSError:
            return False

    def management(self) -> ManagementSettings:
        management = self.info.management
        return ManagementSettings(
            network_id=str(management["network_id"]),
            subnet_id=management["subnet_id"],
            host=self.info.host,
            integration_bridge="br-int",
            interface_name="astara-mgmt",
            port_active_timeout=60.0,
        )

    def write_config(self, **nova: str) -> None:
        if not self.api_port:
            self.api_port = free_port()
        info = self.info
        write_ini(
            self.orchestrator.config_file,
            {
                "DEFAULT": {
                    "transport_url": self.bed.transport_url("neutron"),
                    "state_path": str(self.state_dir / "orchestrator"),
                    "log_file": str(self.orchestrator.log),
                    "resync_interval": "30",
                    "metadata_upstream_url": f"http://[{self.host_address}]:{info.metadata_port}",
                    "metadata_proxy_shared_secret": self.bed.metadata_secret(),
                },
                "neutron": {
                    "cloud": "astara-service",
                    "plugin_events": "true",
                    "write_status": "true",
                },
                "workers": {"processes": "2", "threads": "8"},
                "provider": {
                    "name": "nova",
                    "boot_timeout": str(self.boot_timeout),
                    "housekeeping_interval": str(self.housekeeping_interval),
                },
                "nova": {
                    "cloud": "astara-service",
                    "flavor": operator.APPLIANCE_FLAVOR,
                    "server_group": info.server_group,
                    "pool_size": str(self.pool_size),
                    **nova,
                },
                "management": {
                    "network_id": str(info.management["network_id"]),
                    "subnet_id": str(info.management["subnet_id"]),
                    "host": info.host,
                },
                "health": {"heartbeat_interval": "2", "backoff_initial": "1", "backoff_max": "10"},
                "database": {"connection": f"sqlite:///{self.state_dir / 'orchestrator.sqlite'}"},
                "api": {"port": str(self.api_port), "auth_strategy": "noauth"},
            },
        )

    def down(self) -> None:
        self.orchestrator.kill(15)

    def router(self, router_id: str) -> RouterRecord | None:
        return self.store().get_router(router_id)

    def wait_active(self, router_id: str, timeout: float = 300.0) -> RouterRecord:
        def active() -> RouterRecord | None:
            record = self.router(router_id)
            return record if record is not None and record.state == "active" else None

        try:
            found = wait_for(active, timeout, f"router {router_id} ACTIVE", 0.5)
        except TopologyError as exc:
            raise TopologyError(f"{exc}; last: {self.router(router_id)}") from None
        return cast(RouterRecord, found)

    def servers_of(self, router_id: str) -> list[Any]:
        conn = self.bed.connect("astara-service")
        return list(conn.compute.servers(tags=f"astara-router:{router_id}"))


@dataclass
class Vm:
    server_id: str
    port_id: str
    fixed_ip: str
    floating_ip: str | None = None


@dataclass
class Tenant:
    """A project's networks, router and servers (the bed's demo project)."""

    bed: OpenStackBed
    workload_image: str
    made: list[tuple[str, str]] = field(default_factory=list)  # (kind, id), newest last

    @functools.cached_property
    def conn(self) -> openstack.connection.Connection:
        return self.bed.connect("demo-member")

    def network(self, cidr: str) -> tuple[str, str]:
        """A network and its DHCP-enabled subnet (Astara is the DHCP service); (net, subnet)."""
        conn = self.conn
        net = conn.network.create_network(name=f"t-{uuid.uuid4().hex[:6]}")
        self.made.append(("network", net.id))
        subnet = conn.network.create_subnet(
            network_id=net.id, ip_version=4, cidr=cidr, is_dhcp_enabled=True
        )
        return net.id, subnet.id

    def router(self, *subnets: str, gateway: bool = True) -> str:
        conn = self.conn
        external = self.bed.info().external["network_id"] if gateway else None  # type: ignore[union-attr]
        router = conn.network.create_router(
            name=f"r-{uuid.uuid4().hex[:6]}",
            **({"external_gateway_info": {"network_id": external}} if external else {}),
        )
        self.made.append(("router", router.id))
        for subnet in subnets:
            conn.network.add_interface_to_router(router, subnet_id=subnet)  # type: ignore[call-arg]
        return str(router.id)

    def security_group(self) -> str:
        """The project's "open" group: ICMP and TCP from anywhere (the agent and the pings)."""
        conn = self.conn
        group = conn.network.find_security_group("astara-test-open")
        if group is None:
            group = conn.network.create_security_group(name="astara-test-open")
            for protocol in ("icmp", "tcp", "udp"):
                conn.network.create_security_group_rule(
                    security_group_id=group.id,
                    direction="ingress",
                    ethertype="IPv4",
                    protocol=protocol,
                    remote_ip_prefix="0.0.0.0/0",
                )
        return str(group.id)

    def vm(self, network_id: str, floating: bool = False) -> Vm:
        conn = self.conn
        port = conn.network.create_port(
            network_id=network_id,
            name=f"vm-{uuid.uuid4().hex[:6]}",
            security_group_ids=[self.security_group()],
        )
        self.made.append(("port", port.id))
        server = conn.compute.create_server(
            name=f"vm-{uuid.uuid4().hex[:6]}",
            image_id=self.workload_image,
            flavor_id=conn.compute.find_flavor(operator.TINY_FLAVOR, ignore_missing=False).id,
            networks=[{"port": port.id}],
            config_drive=True,
            user_data=base64.b64encode(AGENT.encode()).decode(),
        )
        self.made.append(("server", server.id))
        vm = Vm(server.id, port.id, str(port.fixed_ips[0]["ip_address"]))
        if floating:
            external = self.bed.info().external["network_id"]  # type: ignore[union-attr]
            fip = conn.network.create_ip(floating_network_id=external, port_id=port.id)
            self.made.append(("floatingip", fip.id))
            vm.floating_ip = str(fip.floating_ip_address)
        return vm

    def wait_active(self, vm: Vm, timeout: float = 300.0) -> None:
        self.conn.compute.wait_for_server(
            self.conn.compute.get_server(vm.server_id), status="ACTIVE", interval=1, wait=timeout
        )

    def console(self, vm: Vm) -> str:
        output: str = self.conn.compute.get_server_console_output(vm.server_id)["output"]
        return output

    def ask(self, vm: Vm, what: str, argument: str = "", timeout: float = 30) -> str | None:
        """One request to the VM's agent through its floating IP, from outside; None when the
        agent does not answer."""
        url = f"http://{vm.floating_ip}/cgi-bin/{what}?{quote(argument, safe=':.')}"
        done = Outside(self.bed.state_dir / "outside").run(
            [sys.executable, "-c", FETCH, url, str(timeout)], timeout=timeout + 10
        )
        return done.stdout if done.returncode == 0 else None

    def ask_through(self, vm: Vm, other: Vm, what: str, argument: str = "") -> str | None:
        """A request to ``other``'s agent (no floating IP needed), made by ``vm``'s."""
        return self.ask(vm, "fetch", f"{other.fixed_ip}/cgi-bin/{what}?{argument}")

    def agent_up(self, vm: Vm, timeout: float = 420) -> None:
        """Wait for the VM's agent to answer through its floating IP (a guest under QEMU
        without KVM, on a busy machine, takes minutes); the console says why when not."""
        try:
            wait_for(
                lambda: self.ask(vm, "ping", "127.0.0.1", 5), timeout, f"agent of {vm.fixed_ip}", 2
            )
        except TopologyError as exc:
            raise TopologyError(f"{exc}; console:\n{self.console(vm)[-1500:]}") from None

    def cleanup(self) -> None:
        conn = self.bed.connect("demo-member")
        for kind, resource_id in reversed(self.made):
            try:
                if kind == "server":
                    conn.compute.delete_server(resource_id, ignore_missing=True)
                    conn.compute.wait_for_delete(
                        conn.compute.get_server(resource_id), interval=1, wait=120
                    )
                elif kind == "floatingip":
                    conn.network.delete_ip(resource_id, ignore_missing=True)
                elif kind == "port":
                    conn.network.delete_port(resource_id, ignore_missing=True)
                elif kind == "router":
                    router = conn.network.get_router(resource_id)
                    conn.network.update_router(router, external_gateway_info={})
                    for port in conn.network.ports(device_id=resource_id):
                        for ip in port.fixed_ips:
                            conn.network.remove_interface_from_router(
                                router,
                                subnet_id=ip["subnet_id"],  # type: ignore[call-arg]
                            )
                    conn.network.delete_router(resource_id, ignore_missing=True)
                elif kind == "network":
                    conn.network.delete_network(resource_id, ignore_missing=True)
            except openstack.exceptions.SDKException:
                continue
        self.made.clear()


# A fetch run in the outside namespace (python: the outside has no curl).
FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as answer:
        sys.stdout.write(answer.read().decode())
except Exception as exc:
    sys.stderr.write(str(exc)); sys.exit(1)
"""
