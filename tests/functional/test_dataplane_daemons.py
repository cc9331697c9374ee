"""Links, DHCP, router advertisements and the metadata proxy, with real daemons and packets.

    tB-x (172.30.0.1, the gateway) --- tB-r [ext 172.30.0.2 + FIP .50 | net1 | net2]
                                                                    |      |
                                     tB-c1 (DHCP 10.31.1.10, SLAAC) -+      +- tB-c2 (DHCP later)

The subsystems run in the test process with its thread moved into the router namespace
(setns), the way the appliance agent runs inside its own namespace.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.dnsmasq import DnsmasqPaths, DnsmasqSubsystem
from astara.appliance.metadata import MetadataSubsystem
from astara.appliance.netlink import ROUTE_PROTO, LinksSubsystem, resolve_links
from astara.appliance.radvd import RadvdSubsystem
from astara.appliance.subsystem import ApplyStepError
from astara.common.processes import is_alive
from astara.drivers.metadata import nova_signature
from astara.testing.netns import Namespace, Topology, inside, wait_for
from astara.testing.resolve import zone_server
from astara.wire.defaults import METADATA_PORT
from astara.wire.document import ApplianceConfig, FloatingIP

pytestmark = pytest.mark.functional

PREFIX = "tB"
EXT_MAC, NET1_MAC, NET2_MAC = "02:0b:00:00:00:01", "02:0b:00:00:00:02", "02:0b:00:00:00:03"
C1_MAC, C2_MAC = "02:0b:00:00:01:01", "02:0b:00:00:02:01"
UPSTREAM_PORT = 18775
SECRET = "s3cret-for-tests"  # noqa: S105 (a test value)
INSTANCE_ID, INSTANCE_IP = "instance-c1", "10.31.1.99"
UPSTREAM_RESOLVER = "172.30.0.1"  # the outside namespace: answers for outside.test only
PYTHON = sys.executable

# Runs in a client namespace: one GET to the proxy from a chosen source address.
METADATA_CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5,
                                  source_address=(sys.argv[3], 0))
conn.request("GET", sys.argv[4])
reply = conn.getresponse()
print(reply.status)
print(reply.read().decode())
"""


def document(hosts_on_net2: bool = False, upstream_port: int = UPSTREAM_PORT) -> ApplianceConfig:
    c2 = [{"port_id": "p2", "mac": C2_MAC, "ips": ["10.31.2.20"], "hostname": "c2"}]
    return ApplianceConfig.model_validate(
        {
            "generation": 2 if hosts_on_net2 else 1,
            "router_id": "router-b",
            "hostname": "router-b",
            "interfaces": [{"mac": EXT_MAC}, {"mac": NET1_MAC, "mtu": 1450}, {"mac": NET2_MAC}],
            "networks": [
                {
                    "id": "ext",
                    "kind": "external",
                    "interface_mac": EXT_MAC,
                    "addresses": ["172.30.0.2/24"],
                    "subnets": [{"id": "e4", "cidr": "172.30.0.0/24", "gateway_ip": "172.30.0.1"}],
                },
                {
                    "id": "net1",
                    "kind": "internal",
                    "interface_mac": NET1_MAC,
                    "addresses": ["10.31.1.1/24", "2001:db8:31:1::1/64"],
                    "dns_domain": "tenant.test",
                    "subnets": [
                        {
                            "id": "n1v4",
                            "cidr": "10.31.1.0/24",
                            "gateway_ip": "10.31.1.1",
                            "dns_nameservers": [UPSTREAM_RESOLVER],
                        },
                        {
                            "id": "n1v6",
                            "cidr": "2001:db8:31:1::/64",
                            "gateway_ip": "2001:db8:31:1::1",
                            "ipv6_ra_mode": "slaac",
                            "ipv6_address_mode": "slaac",
                        },
                    ],
                    "allocations": [
                        {"port_id": "p1", "mac": C1_MAC, "ips": ["10.31.1.10"], "hostname": "c1"},
                        {
                            "port_id": "p1-instance",
                            "mac": "02:0b:00:00:01:99",
                            "ips": [INSTANCE_IP],
                            "hostname": "c1-instance",
                            "instance": {
                                "instance_id": INSTANCE_ID,
                                "project_id": "project-b",
                                "signature": nova_signature(SECRET, INSTANCE_ID),
                            },
                        },
                    ],
                },
                {
                    "id": "net2",
                    "kind": "internal",
                    "interface_mac": NET2_MAC,
                    "addresses": ["10.31.2.1/24"],
                    "subnets": [{"id": "n2v4", "cidr": "10.31.2.0/24", "gateway_ip": "10.31.2.1"}],
                    "allocations": c2 if hosts_on_net2 else [],
                },
            ],
            "floating_ips": [{"floating_ip": "172.30.0.50", "fixed_ip": "10.31.1.10"}],
            "metadata": {"upstream_url": f"http://127.0.0.1:{upstream_port}"},
        }
    )


class _Upstream(BaseHTTPRequestHandler):
    """Stands in for the orchestrator's metadata endpoint: echoes what it received."""

    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append({"path": self.path, **headers})
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Bed:
    topo: Topology
    router: Namespace
    c1: Namespace
    c2: Namespace
    state: Path
    links: dict[str, str]
    addresses: LinksSubsystem
    dhcp: DnsmasqSubsystem
    ra: RadvdSubsystem
    metadata: MetadataSubsystem
    upstream_seen: list[dict[str, str]]
    current: ApplianceConfig | None = None

    def apply(self, config: ApplianceConfig | None) -> None:
        with inside(self.router.name):
            for sub in (self.addresses, self.dhcp, self.ra, self.metadata):
                sub.apply(config, self.current, self.links)
        self.current = config

    def dnsmasq_pid(self, network_id: str) -> int | None:
        return self.dhcp.daemon(network_id).pid()

    def ask_metadata(self, path: str, source: str = INSTANCE_IP) -> tuple[int, str]:
        """GET ``path`` from the proxy on net1, from c1 (holding the instance's address)."""
        self.c1.run(["ip", "addr", "replace", f"{INSTANCE_IP}/24", "dev", "tBc1"])
        out = self.c1.run(
            [PYTHON, "-c", METADATA_CLIENT, "10.31.1.1", str(METADATA_PORT), source, path]
        ).stdout.split("\n", 1)
        return int(out[0]), out[1]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    # dnsmasq re-reads its files after dropping root: the state dir must be world-readable.
    state = Path(tempfile.mkdtemp(prefix="tB-state-"))
    state.chmod(0o755)
    with Topology(PREFIX) as topo:
        router, outside = topo.namespace("tB-r"), topo.namespace("tB-x")
        c1, c2 = topo.namespace("tB-c1"), topo.namespace("tB-c2")
        topo.veth(router, "tBr-e", outside, "tBx-e", left_mac=EXT_MAC)
        topo.veth(router, "tBr-1", c1, "tBc1", left_mac=NET1_MAC, right_mac=C1_MAC)
        topo.veth(router, "tBr-2", c2, "tBc2", left_mac=NET2_MAC, right_mac=C2_MAC)
        outside.run(["ip", "addr", "add", "172.30.0.1/24", "dev", "tBx-e"])
        topo.spawn(outside, zone_server(UPSTREAM_RESOLVER, "outside.test", "198.51.100.7"))
        # Lets a gratuitous ARP create a neighbour entry, so the test can see that one came.
        outside.sysctl("net.ipv4.conf.tBx-e.arp_accept", "1")
        seen: list[dict[str, str]] = []
        handler = type("Upstream", (_Upstream,), {"seen": seen})
        with inside(router.name):
            links = resolve_links([EXT_MAC, NET1_MAC, NET2_MAC])
            upstream = ThreadingHTTPServer(("127.0.0.1", UPSTREAM_PORT), handler)
            threading.Thread(target=upstream.serve_forever, daemon=True).start()
            bed = Bed(
                topo,
                router,
                c1,
                c2,
                state,
                links,
                LinksSubsystem(),
                DnsmasqSubsystem(state / "dhcp"),
                RadvdSubsystem(state / "ra"),
                MetadataSubsystem(),
                seen,
            )
        try:
            bed.apply(document())
            yield bed
        finally:
            try:
                bed.apply(None)
            finally:
                upstream.shutdown()
                upstream.server_close()
                bed.metadata.stop()
                bed.addresses.close()
    shutil.rmtree(state, ignore_errors=True)


def test_links_get_mtu_addresses_routes_and_sysctls(bed: Bed) -> None:
    r = bed.router
    assert "mtu 1450" in r.run(["ip", "link", "show", "tBr-1"]).stdout
    ext = r.run(["ip", "-4", "-o", "addr", "show", "dev", "tBr-e"]).stdout
    assert "172.30.0.2/24" in ext and "172.30.0.50/32" in ext
    default = r.run(["ip", "route", "show", "default"]).stdout
    assert f"default via 172.30.0.1 dev tBr-e proto {ROUTE_PROTO}" in default
    assert r.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert r.run(["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "1"
    assert r.run(["sysctl", "-n", "net.ipv6.conf.tBr-1.accept_ra"]).stdout.strip() == "0"
    # The router reaches its gateway, so the address and route are real, not just listed.
    r.run(["ping", "-c", "1", "-W", "2", "172.30.0.1"])


def test_gratuitous_arp_announces_the_floating_ip(bed: Bed) -> None:
    def announced() -> bool:
        neigh = bed.topo.namespaces["tB-x"].run(["ip", "neigh", "show", "172.30.0.50"]).stdout
        return EXT_MAC in neigh

    wait_for(announced, 5, "a gratuitous ARP for 172.30.0.50")


def test_dhcp_serves_the_fixed_ip_and_default_route(bed: Bed) -> None:
    lease = bed.topo.dhcp(bed.c1, "tBc1")
    assert str(lease) == "10.31.1.10/24"
    assert "default via 10.31.1.1" in bed.c1.run(["ip", "route"]).stdout


def test_dhcp_gives_the_network_mtu(bed: Bed) -> None:
    bed.c1.run(["ip", "link", "set", "dev", "tBc1", "mtu", "1500"])
    bed.topo.dhcp(bed.c1, "tBc1")
    assert "mtu 1450" in bed.c1.run(["ip", "link", "show", "tBc1"]).stdout


def test_router_advertisements_carry_the_mtu(bed: Bed) -> None:
    def advert() -> str:
        # Nothing until the client's link-local address has passed duplicate detection and
        # radvd may answer (it spaces its advertisements by seconds).
        done = bed.c1.run(["rdisc6", "-1", "-w", "2000", "tBc1"], check=False)
        return done.stdout if "Hop limit" in done.stdout else ""

    found = str(wait_for(advert, 20, "a router advertisement on tB-c1"))
    assert re.search(r"^\s*MTU\s*:\s*1450 bytes", found, re.M), found


def test_host_added_later_is_served_after_a_reload_by_the_same_process(bed: Bed) -> None:
    before = bed.dnsmasq_pid("net2")
    assert before is not None
    assert DnsmasqPaths(bed.state / "dhcp", "net2").hosts.read_text() == ""
    bed.apply(document(hosts_on_net2=True))
    assert bed.dnsmasq_pid("net2") == before
    assert str(bed.topo.dhcp(bed.c2, "tBc2")) == "10.31.2.20/24"


def test_dns_answers_the_networks_names_both_ways_and_forwards_the_rest(bed: Bed) -> None:
    bed.topo.dhcp(bed.c1, "tBc1")
    # The lease names the router as the network's resolver.
    resolv = (bed.topo.workdir / "tB-c1.resolv").read_text()
    assert resolv.split() == ["nameserver", "10.31.1.1"]

    def ask(name: str, kind: str = "A") -> list[str]:
        argv = [PYTHON, "-m", "astara.testing.resolve", "10.31.1.1", name, "--type", kind]
        return bed.c1.run(argv).stdout.split()

    assert ask("c1-instance.tenant.test") == [INSTANCE_IP]  # a port that never leased
    assert ask("c1") == ["10.31.1.10"]
    assert ask("10.31.1.10", "PTR") == ["c1.tenant.test"]
    # Another name goes to the subnet's dns_nameservers (the outside namespace's dnsmasq).
    assert ask("www.outside.test") == ["198.51.100.7"]
    # The network's own domain is never forwarded: an unknown name there does not exist.
    assert ask("nobody.tenant.test") == ["NXDOMAIN"]


def test_router_advertisements_give_a_slaac_address(bed: Bed) -> None:
    def slaac() -> list[Any]:
        found = bed.c1.addresses("tBc1", 6)
        return [a for a in found if str(a.network) == "2001:db8:31:1::/64"]

    wait_for(slaac, 10, "a SLAAC address on tB-c1")
    assert "default via fe80::" in bed.c1.run(["ip", "-6", "route", "show", "default"]).stdout


def test_metadata_is_forwarded_with_the_instance_identity(bed: Bed) -> None:
    status, body = bed.ask_metadata("/latest/meta-data/?x=1")
    assert status == 200, body
    assert json.loads(body) == {"path": "/latest/meta-data/?x=1"}
    seen = bed.upstream_seen[-1]
    assert seen["x-forwarded-for"] == INSTANCE_IP
    assert seen["x-instance-id"] == INSTANCE_ID
    assert seen["x-tenant-id"] == "project-b"
    assert seen["x-instance-id-signature"] == nova_signature(SECRET, INSTANCE_ID)


def test_metadata_refuses_unknown_sources_and_reports_upstream_failure(bed: Bed) -> None:
    with inside(bed.router.name), socket.create_connection(("127.0.0.1", METADATA_PORT)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100).split(b" ")[1] == b"404"
    assert bed.ask_metadata("/", source="10.31.1.10")[0] == 404  # a port, not an instance
    server = bed.metadata.server
    bed.apply(document(hosts_on_net2=True, upstream_port=1))
    try:
        assert bed.metadata.server is server  # same socket, new table
        status, _ = bed.ask_metadata("/")
        assert status == 502
    finally:
        bed.apply(document(hosts_on_net2=True))


def test_applying_the_same_document_again_changes_nothing(bed: Bed) -> None:
    doc = document(hosts_on_net2=True)
    bed.apply(doc)
    pids = (bed.dnsmasq_pid("net1"), bed.dnsmasq_pid("net2"), bed.ra.daemon.pid())
    addrs = bed.router.run(["ip", "-o", "addr"]).stdout
    routes = bed.router.run(["ip", "route"]).stdout
    bed.apply(doc)
    assert (bed.dnsmasq_pid("net1"), bed.dnsmasq_pid("net2"), bed.ra.daemon.pid()) == pids
    assert None not in pids
    assert bed.router.run(["ip", "-o", "addr"]).stdout == addrs
    assert bed.router.run(["ip", "route"]).stdout == routes
    assert bed.addresses.last_change is not None
    assert not any(bed.addresses.last_change)


def test_addresses_diff_against_the_last_apply_until_told_to_reread(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = bed.current
    assert doc is not None
    extra = FloatingIP.model_validate({"floating_ip": "172.30.0.51", "fixed_ip": "10.31.1.11"})
    more = doc.model_copy(
        update={"generation": doc.generation + 1, "floating_ips": [*doc.floating_ips, extra]}
    )
    dumps: list[str] = []
    for kind in ("addresses", "routes"):
        read = getattr(bed.addresses.dump, kind)

        def counted(read: Any = read, kind: str = kind) -> Any:
            dumps.append(kind)
            return read()

        monkeypatch.setattr(bed.addresses.dump, kind, counted)

    def addresses(config: ApplianceConfig, previous: ApplianceConfig | None) -> str:
        with inside(bed.router.name):
            bed.addresses.apply(config, previous, bed.links)
        return bed.router.run(["ip", "-4", "-o", "addr", "show", "dev", "tBr-e"]).stdout

    try:
        # On top of what it applied itself: no dump, just the new address.
        assert "172.30.0.51/32" in addresses(more, doc)
        assert dumps == []
        # Drift behind its back is not seen on that path...
        bed.router.run(["ip", "addr", "del", "172.30.0.50/32", "dev", "tBr-e"])
        assert "172.30.0.50/32" not in addresses(more, more)
        assert dumps == []
        # ...but without a previous document the kernel is read again and repaired.
        assert "172.30.0.50/32" in addresses(more, None)
        assert dumps == ["addresses", "routes"]
        # A failed apply leaves nothing to trust either.
        with inside(bed.router.name), pytest.raises(ApplyStepError):
            bed.addresses.apply(doc, more, {})
        bed.router.run(["ip", "addr", "del", "172.30.0.50/32", "dev", "tBr-e"])
        ext = addresses(doc, more)
        assert "172.30.0.50/32" in ext and "172.30.0.51/32" not in ext
        assert dumps == ["addresses", "routes"] * 2
    finally:
        addresses(doc, None)


def test_removed_network_and_ipv6_stop_their_daemons(bed: Bed) -> None:
    doc = document(hosts_on_net2=True)
    net2_pid, radvd_pid = bed.dnsmasq_pid("net2"), bed.ra.daemon.pid()
    assert net2_pid is not None and radvd_pid is not None
    networks = [n for n in doc.networks if n.id != "net2"]
    net1 = next(n for n in networks if n.id == "net1")
    v4_only = net1.model_copy(update={"subnets": net1.subnets[:1]})
    smaller = doc.model_copy(
        update={"networks": [v4_only if n.id == "net1" else n for n in networks]}
    )
    try:
        bed.apply(smaller)
        assert not is_alive(net2_pid) and not is_alive(radvd_pid)
        assert bed.dnsmasq_pid("net1") is not None
        assert not DnsmasqPaths(bed.state / "dhcp", "net2").pid.exists()
    finally:
        bed.apply(doc)
    assert bed.dnsmasq_pid("net2") is not None


def test_removal_stops_everything(bed: Bed) -> None:
    pids = [bed.dnsmasq_pid("net1"), bed.dnsmasq_pid("net2"), bed.ra.daemon.pid()]
    doc = bed.current
    bed.apply(None)
    try:
        assert not any(is_alive(pid) for pid in pids if pid is not None)
        assert bed.metadata.server is None
        assert "172.30.0.50" not in bed.router.run(["ip", "-o", "addr"]).stdout
    finally:
        bed.apply(doc)
