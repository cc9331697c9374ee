"""The local cloud-in-a-box: real Neutron, the orchestrator, netns appliances, workloads.

Used by the demo, the end-to-end tests and the benchmarks. The orchestrator runs as a
separate process (as in production), so tests can kill it at any moment. The "outside world"
is the netns provider's uplink namespace; workloads ("VMs") are namespaces holding a Neutron
port's MAC on that port's network bridge, addressed by the appliance's DHCP.
"""

from __future__ import annotations

import ipaddress
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from astara.common.tls import CertificateAuthority
from astara.orchestrator.appliance_client import ApplianceClient
from astara.providers.netns import NetnsProvider, short_hash
from astara.testing import services
from astara.testing.netns import Namespace, Topology
from astara.testing.neutron_bed import RABBIT_URL, Endpoint, NeutronTestbed, free_port
from astara.testing.orchestrator import OrchestratorProcess, write_ini


@dataclass
class Workload:
    """A lightweight VM: a namespace with one NIC carrying a Neutron port's MAC."""

    namespace: Namespace
    ifname: str
    mac: str
    address: ipaddress.IPv4Interface | None = None


@dataclass
class CloudInABox:
    state_dir: Path
    bed: NeutronTestbed
    prefix: str = "ast"
    processes: int = 2
    threads: int = 4
    metrics_port: int = 0
    resync_interval: float = 30.0  # short, so tests see the periodic reconcile
    database_url: str | None = None  # the orchestrator's store; SQLite in state_dir when unset
    # [health] overrides, e.g. a chaos test that kills one router often keeps the breaker shut.
    health: dict[str, str] = field(default_factory=dict)
    # The management API: its port (0: a free one, chosen when the configuration is written),
    # and [keystone_authtoken] to check tokens with (none: auth_strategy = noauth).
    api_port: int = 0
    keystone_authtoken: dict[str, str] | None = None
    # Nova's metadata API (or a test double of it) and its shared secret; None: no metadata.
    metadata_upstream_url: str | None = None
    metadata_secret: str | None = None
    _workloads: Topology | None = field(default=None, init=False)

    @property
    def config_file(self) -> Path:
        return self.orchestrator.config_file

    @property
    def orchestrator_log(self) -> Path:
        return self.orchestrator.log

    def provider(self) -> NetnsProvider:
        """A provider object on the same state as the orchestrator's (for uplinks, checks)."""
        ca = CertificateAuthority.load_or_create(self.state_dir / "orchestrator" / "ca")
        return NetnsProvider(self.state_dir / "instances", ca, prefix=self.prefix)

    def appliance(self) -> ApplianceClient:
        """A client of the cloud's one appliance, with the orchestrator's own credentials."""
        (instance,) = self.provider().list()
        creds = self.state_dir / "orchestrator"
        return ApplianceClient(
            instance.management_address,
            ca=creds / "ca" / "ca.pem",
            cert=creds / "orchestrator-client.pem",
            key=creds / "orchestrator-client.pem",
        )

    def up(self) -> Endpoint:
        services.ensure_all()
        endpoint = self.bed.up()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_config(endpoint)
        self.provider().ensure_fabric()
        self.start_orchestrator()
        return endpoint

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _write_config(self, endpoint: Endpoint) -> None:
        if not self.api_port:
            self.api_port = free_port()
        sections = {
            "DEFAULT": {
                "transport_url": RABBIT_URL,
                "state_path": str(self.state_dir / "orchestrator"),
                "resync_interval": str(self.resync_interval),
                "metrics_port": str(self.metrics_port),
                "log_file": str(self.orchestrator_log),
                "debug": "false",
                **(
                    {
                        "metadata_upstream_url": self.metadata_upstream_url,
                        "metadata_proxy_shared_secret": self.metadata_secret or "",
                    }
                    if self.metadata_upstream_url
                    else {}
                ),
            },
            "neutron": {
                "auth_type": "none",
                "endpoint_override": endpoint.url,
                "plugin_events": str(self.bed.astara_plugin).lower(),
                "write_status": str(self.bed.astara_plugin).lower(),
            },
            "workers": {"processes": str(self.processes), "threads": str(self.threads)},
            "provider": {
                "name": "netns",
                "state_path": str(self.state_dir / "instances"),
                "prefix": self.prefix,
                "boot_timeout": "30",
            },
            "health": {
                "backoff_initial": "0.5",
                "backoff_max": "5",
                **self.health,
            },
            "database": {
                "connection": self.database_url
                or f"sqlite:///{self.state_dir / 'orchestrator.sqlite'}"
            },
            "api": {
                "port": str(self.api_port),
                "auth_strategy": "keystone" if self.keystone_authtoken else "noauth",
            },
            **({"keystone_authtoken": self.keystone_authtoken} if self.keystone_authtoken else {}),
        }
        write_ini(self.config_file, sections)

    @property
    def orchestrator(self) -> OrchestratorProcess:
        return OrchestratorProcess(self.state_dir)

    def orchestrator_pid(self) -> int | None:
        """The running orchestrator's pid (also one started by an earlier command)."""
        return self.orchestrator.pid()

    def start_orchestrator(self) -> int:
        return self.orchestrator.start()

    def kill_orchestrator(self, sig: int = signal.SIGKILL) -> None:
        """Stop the orchestrator and its worker processes (SIGKILL: a crash, no clean-up)."""
        self.orchestrator.kill(sig)

    def uplink(self, network_id: str, gateway_cidr: str) -> Namespace:
        """Connect an external network to the outside world, which holds its gateway."""
        uplink = self.provider().ensure_uplink(network_id, gateway_cidr)
        return Namespace(uplink.namespace)

    def workload(self, network_id: str, mac: str) -> Workload:
        """A VM for a Neutron port: plugged on its network's bridge, no address yet."""
        topology = self._topology()
        provider = self.provider()
        bridge = provider.ensure_network_bridge(network_id)
        key = short_hash(mac, 8)
        ns = topology.namespace(f"{self.prefix}w{key}")
        fabric = Namespace(provider.names.fabric_ns)
        topology.veth(ns, f"{self.prefix}w{key}v", fabric, f"{self.prefix}w{key}f", left_mac=mac)
        fabric.run(["ip", "link", "set", f"{self.prefix}w{key}f", "master", bridge])
        return Workload(ns, f"{self.prefix}w{key}v", mac)

    def dhcp(
        self, workload: Workload, timeout: int = 10, request: Sequence[str] = ()
    ) -> ipaddress.IPv4Interface:
        """An IPv4 lease (udhcpc), asking for the options in ``request`` besides the usual."""
        topology = self._topology()
        workload.address = topology.dhcp(workload.namespace, workload.ifname, timeout, request)
        return workload.address

    def lease(self, workload: Workload) -> dict[str, str]:
        """What the workload's last IPv4 lease gave, by udhcpc's names (ip, ntpsrv...)."""
        return self._topology().lease(workload.namespace)

    def dhcp6(
        self, workload: Workload, stateless: bool = False, timeout: int = 10
    ) -> dict[str, str]:
        """DHCPv6 (ISC dhclient): see ``Topology.dhcp6``."""
        return self._topology().dhcp6(workload.namespace, workload.ifname, stateless, timeout)

    def resolv_conf(self, workload: Workload) -> str:
        """What the workload's DHCP client wrote as its resolv.conf."""
        path = self._topology().workdir / f"{workload.namespace.name}.resolv"
        return path.read_text() if path.exists() else ""

    def spawn(self, ns: Namespace, argv: list[str]) -> None:
        """A long-running helper process in ``ns``, stopped with the workloads."""
        self._topology().spawn(ns, argv)

    def _topology(self) -> Topology:
        """Workloads and helper processes: one topology, removed by remove_workloads()."""
        if self._workloads is None:
            self._workloads = Topology(prefix=f"{self.prefix}w")
        return self._workloads

    def remove_workloads(self) -> None:
        """Ours, and those an earlier command (a demo, a ``vm``) left running."""
        self._topology().close()
        self._topology().sweep()
        self._workloads = None

    def down(self, stop_neutron: bool = True) -> None:
        self.kill_orchestrator(signal.SIGTERM)
        self.remove_workloads()
        self.provider().teardown()
        if stop_neutron:
            self.bed.down()
