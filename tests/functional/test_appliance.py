"""Acceptance: the real astara-appliance in a namespace, configured over mutual TLS, real packets.

Topology (all namespaces and links start with "tC"):

    tC-m (management, test client + metadata upstream) --tC-m0/tC-rm--+
    tC-p (public network, 172.24.4.0/24)                --tC-p0/tC-rx--+-- tC-r (appliance)
    tC-a (tenant A, 10.1.0.0/24 + 2001:db8:1::/64)      --tC-a0/tC-r1--+
    tC-b (tenant B, 10.2.0.0/24)                        --tC-b0/tC-r2--+

The workloads in tC-a and tC-b get their addresses from the appliance's dnsmasq (udhcpc).
Tests run in file order and share the appliance: later ones change its configuration.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from astara.common.tls import CertificateAuthority
from astara.drivers.metadata import nova_signature
from astara.testing.netns import Namespace, Process, Topology, wait_for
from astara.wire.defaults import API_PORT

pytestmark = pytest.mark.functional

PY = sys.executable
APPLIANCE = str(Path(PY).parent / "astara-appliance")

MGMT_IP = "192.168.77.2"
UPSTREAM = "192.168.77.1"
PUBLIC_HOST, PUBLIC_OTHER, PUBLIC_GW = "172.24.4.100", "172.24.4.101", "172.24.4.1"
ROUTER_EXT = "172.24.4.2"
FIP_A, FIP_B, PF_IP = "172.24.4.10", "172.24.4.11", "172.24.4.20"
HOST_A, HOST_B = "10.1.0.5", "10.2.0.5"
MAC = {
    "rm": "fa:16:3e:c0:00:01",
    "rx": "fa:16:3e:c0:00:02",
    "r1": "fa:16:3e:c0:00:03",
    "r2": "fa:16:3e:c0:00:04",
    "r3": "fa:16:3e:c0:00:05",
    "a0": "fa:16:3e:a0:00:05",
    "b0": "fa:16:3e:b0:00:05",
}
METADATA_KEY = "metadata-shared-key"
INSTANCE_A, PROJECT_A = "instance-a", "project-a"

# Answers every connection with the peer address it sees, then echoes lines.
WHOAMI = r"""
import socket, sys, threading
def serve(conn, peer):
    with conn:
        conn.sendall(f"{peer[0]}\n".encode())
        while data := conn.recv(4096):
            conn.sendall(data)
def listen(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen()
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
for port in sys.argv[1:]:
    threading.Thread(target=listen, args=(int(port),)).start()
"""

# Connects (from a given source address) and prints the first line the server sends: the
# address it saw us as.
WHOAMI_CLIENT = r"""
import socket, sys
host, port, timeout, source = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    with socket.create_connection((host, port), timeout, (source, 0) if source else None) as s:
        print(s.makefile().readline().strip())
except OSError as exc:
    print(f"error: {type(exc).__name__}")
"""

# Keeps one TCP connection open: prints the greeting, then echoes each stdin line through it.
PERSISTENT_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile("rw")
print(f.readline().strip(), flush=True)
for line in sys.stdin:
    f.write(line)
    f.flush()
    print(f.readline().strip(), flush=True)
"""

# The metadata service upstream of the appliance's proxy: answers with what it received.
UPSTREAM_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
HTTPServer((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""

# An HTTPS client of the appliance API (stdlib only, so it starts fast in the namespace).
API_CLIENT = r"""
import http.client, json, ssl, sys
host, port, method, path, ctype, cert, key, ca = sys.argv[1:9]
body = sys.stdin.read()
context = ssl.create_default_context(cafile=ca)
if cert != "-":
    context.load_cert_chain(cert, key)
try:
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=20)
    conn.request(method, path, body=body or None, headers={"Content-Type": ctype})
    answer = conn.getresponse()
    print(json.dumps({"status": answer.status, "body": answer.read().decode()}))
except (ssl.SSLError, OSError) as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


IDENTITY_A = {
    "instance_id": INSTANCE_A,
    "project_id": PROJECT_A,
    "signature": nova_signature(METADATA_KEY, INSTANCE_A),
}


def document(generation: int) -> dict[str, Any]:
    def tenant(letter: str, index: int, mac: str, alloc_mac: str, v6: bool) -> dict[str, Any]:
        subnets: list[dict[str, Any]] = [
            {"id": f"{letter}4", "cidr": f"10.{index}.0.0/24", "gateway_ip": f"10.{index}.0.1"}
        ]
        addresses = [f"10.{index}.0.1/24"]
        if v6:
            subnets.append(
                {
                    "id": f"{letter}6",
                    "cidr": f"2001:db8:{index}::/64",
                    "gateway_ip": f"2001:db8:{index}::1",
                    "ipv6_ra_mode": "slaac",
                    "ipv6_address_mode": "slaac",
                }
            )
            addresses.append(f"2001:db8:{index}::1/64")
        return {
            "id": f"net-{letter}",
            "kind": "internal",
            "interface_mac": mac,
            "addresses": addresses,
            "subnets": subnets,
            "allocations": [
                {
                    "port_id": f"port-{letter}",
                    "mac": alloc_mac,
                    "ips": [f"10.{index}.0.5"],
                    "hostname": f"vm-{letter}",
                    **({"instance": IDENTITY_A} if letter == "a" else {}),
                }
            ],
        }

    return {
        "generation": generation,
        "router_id": "router-tc",
        "hostname": "router-tc",
        "interfaces": [{"mac": MAC["rm"]}]
        + [{"mac": MAC[name], "port_id": f"port-{name}"} for name in ("rx", "r1", "r2")],
        "networks": [
            {
                "id": "mgmt",
                "kind": "management",
                "interface_mac": MAC["rm"],
                "addresses": [f"{MGMT_IP}/24"],
            },
            {
                "id": "ext",
                "kind": "external",
                "interface_mac": MAC["rx"],
                "addresses": [f"{ROUTER_EXT}/24"],
                "subnets": [{"id": "ext4", "cidr": "172.24.4.0/24", "gateway_ip": PUBLIC_GW}],
            },
            tenant("a", 1, MAC["r1"], MAC["a0"], v6=True),
            tenant("b", 2, MAC["r2"], MAC["b0"], v6=False),
        ],
        "floating_ips": [{"floating_ip": FIP_A, "fixed_ip": HOST_A}],
        "port_forwards": [
            {
                "id": "pf-b",
                "external_ip": PF_IP,
                "protocol": "tcp",
                "external_port": {"first": 8022, "last": 8022},
                "internal_ip": HOST_B,
                "internal_port": {"first": 7000, "last": 7000},
            }
        ],
        "firewall": {
            "default_action": "allow",
            "rules": [
                {
                    "id": "allow-7001-from-host",
                    "action": "allow",
                    "direction": "ingress",
                    "protocol": "tcp",
                    "source_cidr": f"{PUBLIC_HOST}/32",
                    "destination_ports": {"first": 7001, "last": 7001},
                },
                {
                    "id": "deny-7001",
                    "action": "deny",
                    "direction": "ingress",
                    "protocol": "tcp",
                    "destination_ports": {"first": 7001, "last": 7001},
                },
            ],
        },
        "metadata": {"upstream_url": f"http://{UPSTREAM}:8775"},
    }


@dataclass
class Answer:
    status: int | None
    body: str
    error: str | None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Bed:
    topo: Topology
    ns: dict[str, Namespace]
    argv: tuple[str, ...]
    certs: Path
    state_dir: Path
    appliance: Process = field(init=False)

    def start_appliance(self) -> None:
        """Start astara-appliance in the router namespace and wait for its API."""
        self.appliance = self.topo.spawn(self.ns["r"], self.argv)

        def api_up() -> bool:
            assert self.appliance.alive(), self.appliance.output()
            return self.api("GET", "/v1/health").status == 200

        wait_for(api_up, 20, "the appliance API")

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        cert: str = "client",
        content_type: str = "application/json",
    ) -> Answer:
        """Call the appliance API from the management namespace over HTTPS."""
        cert_args = (
            ["-", "-"] if cert == "-" else [f"{self.certs}/{cert}.pem", f"{self.certs}/{cert}.key"]
        )
        argv = [PY, "-c", API_CLIENT, MGMT_IP, str(API_PORT), method, path, content_type]
        done = subprocess.run(
            self.ns["m"].argv([*argv, *cert_args, str(self.certs / "ca.pem")]),
            input="" if body is None else (body if isinstance(body, str) else json.dumps(body)),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result = json.loads(done.stdout)
        return Answer(result.get("status"), result.get("body", ""), result.get("error"))

    def whoami(self, ns: str, host: str, port: int, timeout: float = 3, source: str = "") -> str:
        done = self.ns[ns].run([PY, "-c", WHOAMI_CLIENT, host, str(port), str(timeout), source])
        return done.stdout.strip()

    def ping(self, ns: str, host: str) -> bool:
        return self.ns[ns].run(["ping", "-c", "1", "-W", "1", host], check=False).returncode == 0


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with Topology("tC") as topo:
        ns = {key: topo.namespace(f"tC-{key}") for key in ("r", "m", "p", "a", "b")}
        topo.veth(ns["r"], "tC-rm", ns["m"], "tC-m0", MAC["rm"])
        topo.veth(ns["r"], "tC-rx", ns["p"], "tC-p0", MAC["rx"])
        topo.veth(ns["r"], "tC-r1", ns["a"], "tC-a0", MAC["r1"], MAC["a0"])
        topo.veth(ns["r"], "tC-r2", ns["b"], "tC-b0", MAC["r2"], MAC["b0"])
        # A spare NIC for the network the rollback test adds (no dummy driver on this kernel).
        topo.veth(ns["r"], "tC-r3", ns["r"], "tC-r4", MAC["r3"])
        # The address the appliance is booted with (Nova/cloud-init's job in a real cloud).
        ns["r"].run(["ip", "addr", "add", f"{MGMT_IP}/24", "dev", "tC-rm"])
        ns["m"].run(["ip", "addr", "add", f"{UPSTREAM}/24", "dev", "tC-m0"])
        for ip in (PUBLIC_HOST, PUBLIC_OTHER, PUBLIC_GW):
            ns["p"].run(["ip", "addr", "add", f"{ip}/24", "dev", "tC-p0"])

        certs = topo.workdir / "certs"
        ca = CertificateAuthority.load_or_create(certs)
        ca.issue("router-tc", "server", ips=[MGMT_IP]).write(
            certs / "server.pem", certs / "server.key"
        )
        ca.issue("orchestrator", "client").write(certs / "client.pem", certs / "client.key")
        rogue = CertificateAuthority.load_or_create(topo.workdir / "rogue")
        rogue.issue("intruder", "client").write(certs / "rogue.pem", certs / "rogue.key")

        for key, ports in (("p", ["7000"]), ("a", ["7000", "7001"]), ("b", ["7000"])):
            topo.spawn(ns[key], [PY, "-c", WHOAMI, *ports])
        topo.spawn(ns["m"], [PY, "-c", UPSTREAM_SERVER, UPSTREAM, "8775"])

        state_dir = topo.workdir / "state"
        argv = (
            APPLIANCE,
            "--listen", MGMT_IP,
            "--cert", str(certs / "server.pem"),
            "--key", str(certs / "server.key"),
            "--ca", str(certs / "ca.pem"),
            "--state-dir", str(state_dir),
            "--log-level", "DEBUG",
        )  # fmt: skip
        bed = Bed(topo, ns, argv, certs, state_dir)
        bed.start_appliance()
        answer = bed.api("PUT", "/v1/config", document(1))
        assert answer.status == 200, (answer, bed.appliance.output())
        try:
            yield bed
        finally:
            if not bed.appliance.alive():
                print(bed.appliance.output())


def test_workloads_get_their_fixed_ips_from_the_appliance_dhcp(bed: Bed) -> None:
    assert str(bed.topo.dhcp(bed.ns["a"], "tC-a0").ip) == HOST_A
    assert str(bed.topo.dhcp(bed.ns["b"], "tC-b0").ip) == HOST_B
    route = bed.ns["a"].run(["ip", "-4", "route", "show", "default"]).stdout
    assert "via 10.1.0.1" in route


def test_tenants_route_to_each_other(bed: Bed) -> None:
    assert bed.ping("a", HOST_B)
    assert bed.ping("b", HOST_A)
    # Not NATed between tenants: B sees A's own address.
    assert bed.whoami("a", HOST_B, 7000) == HOST_A


def test_snat_to_public_uses_the_router_external_address(bed: Bed) -> None:
    assert bed.whoami("b", PUBLIC_HOST, 7000) == ROUTER_EXT


def test_floating_ip_inbound_and_outbound(bed: Bed) -> None:
    assert bed.whoami("p", FIP_A, 7000) == PUBLIC_HOST
    assert bed.whoami("a", PUBLIC_HOST, 7000) == FIP_A


def test_port_forward_reaches_the_inside_host(bed: Bed) -> None:
    assert bed.whoami("p", PF_IP, 8022) == PUBLIC_HOST


def test_firewall_first_matching_rule_decides(bed: Bed) -> None:
    # Allowed from .100 by the first rule; dropped from .101 by the second.
    assert bed.whoami("p", FIP_A, 7001, source=PUBLIC_HOST) == PUBLIC_HOST
    assert bed.whoami("p", FIP_A, 7001, timeout=1, source=PUBLIC_OTHER) == "error: TimeoutError"
    # The deny is scoped to its port: .101 still reaches 7000.
    assert bed.whoami("p", FIP_A, 7000, source=PUBLIC_OTHER) == PUBLIC_OTHER


def test_metadata_requests_reach_upstream_with_instance_headers(bed: Bed) -> None:
    script = (
        "import urllib.request; "
        "print(urllib.request.urlopen('http://169.254.169.254/latest/meta-data/', timeout=5)"
        ".read().decode())"
    )
    seen = json.loads(bed.ns["a"].run([PY, "-c", script]).stdout)
    headers = {key.lower(): value for key, value in seen["headers"].items()}
    assert seen["path"] == "/latest/meta-data/"
    assert headers["x-forwarded-for"] == HOST_A
    assert headers["x-instance-id"] == INSTANCE_A
    assert headers["x-tenant-id"] == PROJECT_A
    assert headers["x-instance-id-signature"] == nova_signature(METADATA_KEY, INSTANCE_A)


def test_router_advertisements_give_the_tenant_a_slaac_address(bed: Bed) -> None:
    def slaac() -> list[str]:
        found = bed.ns["a"].addresses("tC-a0", 6)
        return [str(a) for a in found if str(a).startswith("2001:db8:1:")]

    addresses = wait_for(slaac, 15, "a SLAAC address on tC-a0")
    assert str(addresses).endswith("/64']")
    # The new address is usable once duplicate address detection is over (about a second).
    wait_for(lambda: bed.ping("a", "2001:db8:1::1"), 10, "the router over the SLAAC address")


def test_status_endpoints_over_mutual_tls(bed: Bed) -> None:
    health = bed.api("GET", "/v1/health").json()
    assert (health["generation"], health["last_result"]) == (1, "applied")
    assert health["router_id"] == "router-tc"
    interfaces = {i["name"]: i for i in bed.api("GET", "/v1/interfaces").json()}
    assert (interfaces["tC-rx"]["mac"], interfaces["tC-rx"]["port_id"]) == (MAC["rx"], "port-rx")
    assert f"{FIP_A}/32" in interfaces["tC-rx"]["addresses"]
    counters = bed.api("GET", "/v1/counters").json()
    rules = {(c["chain"], c["rule"]): c for c in counters["rules"]}
    assert rules[("postrouting", "snat")]["packets"] >= 1
    assert counters["conntrack_entries"] >= 1
    r1 = next(c for c in counters["interfaces"] if c["name"] == "tC-r1")
    assert (r1["port_id"], r1["rx_packets"] > 0) == ("port-r1", True)
    config = bed.api("GET", "/v1/config")
    assert str(IDENTITY_A["signature"]) not in config.body
    assert config.json()["networks"][2]["allocations"][0]["instance"]["signature"] == "*" * 10


class Conversation:
    """One long-lived TCP connection through the router, driven line by line."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen

    def line(self, timeout: float = 3) -> str:
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        assert ready, "no answer on the long-lived connection"
        return self.popen.stdout.readline().strip()

    def echo(self, text: str) -> str:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()
        return self.line()


@pytest.fixture
def conversation(bed: Bed) -> Iterator[Conversation]:
    popen = subprocess.Popen(
        bed.ns["p"].argv([PY, "-u", "-c", PERSISTENT_CLIENT, FIP_A, "7000"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        talk = Conversation(popen)
        assert talk.line() == PUBLIC_HOST
        yield talk
    finally:
        popen.kill()
        popen.wait(5)


def test_connection_survives_same_and_changed_document(
    bed: Bed, conversation: Conversation
) -> None:
    assert conversation.echo("before") == "before"
    same = bed.api("PUT", "/v1/config", document(1))
    assert same.status == 200
    assert same.json()["last_result"] == "unchanged"
    assert conversation.echo("after same") == "after same"

    changed = document(2)
    changed["floating_ips"].append({"floating_ip": FIP_B, "fixed_ip": HOST_B})
    answer = bed.api("PUT", "/v1/config", changed)
    assert answer.status == 200, answer
    assert answer.json()["generation"] == 2
    assert conversation.echo("after change") == "after change"
    assert bed.whoami("p", FIP_B, 7000) == PUBLIC_HOST
    assert bed.whoami("b", PUBLIC_HOST, 7000) == FIP_B


def test_older_generation_is_409(bed: Bed) -> None:
    answer = bed.api("PUT", "/v1/config", document(1))
    assert answer.status == 409
    assert answer.json()["applied_generation"] == 2


def test_broken_document_is_422_and_changes_nothing(bed: Bed) -> None:
    broken = document(3)
    broken["floating_ips"] = [{"floating_ip": "172.24.4.12", "fixed_ip": "10.9.9.9"}]
    broken["networks"][1]["interface_mac"] = "fa:16:3e:ff:ff:ff"
    answer = bed.api("PUT", "/v1/config", broken)
    assert answer.status == 422
    locs = {tuple(p["loc"]) for p in answer.json()["detail"]}
    assert {("floating_ips", 0, "fixed_ip"), ("networks", 1, "interface_mac")} <= locs
    assert bed.api("PUT", "/v1/config", "{not json").status == 422
    assert bed.api("PUT", "/v1/config", document(3), content_type="text/plain").status == 415
    assert bed.api("GET", "/v1/health").json()["generation"] == 2
    assert bed.whoami("p", FIP_B, 7000) == PUBLIC_HOST


def test_failure_mid_apply_rolls_back_to_the_previous_document(bed: Bed) -> None:
    # Environment fault: the hosts file the new network's dnsmasq needs cannot be written,
    # so the dhcp step fails after the addresses and firewall steps have run.
    (bed.state_dir / "dhcp" / "dnsmasq-net-c.hosts").mkdir(parents=True)
    failing = document(3)
    failing["floating_ips"].append({"floating_ip": FIP_B, "fixed_ip": HOST_B})
    failing["interfaces"].append({"mac": MAC["r3"]})
    failing["networks"].append(
        {
            "id": "net-c",
            "kind": "internal",
            "interface_mac": MAC["r3"],
            "addresses": ["10.3.0.1/24"],
            "subnets": [{"id": "c4", "cidr": "10.3.0.0/24", "gateway_ip": "10.3.0.1"}],
        }
    )
    answer = bed.api("PUT", "/v1/config", failing)
    assert answer.status == 500, answer
    assert answer.json()["step"] == "dhcp"

    health = bed.api("GET", "/v1/health").json()
    assert (health["generation"], health["last_result"]) == (2, "failed")
    assert bed.api("GET", "/v1/config").json()["generation"] == 2
    assert bed.ns["r"].addresses("tC-r3") == []
    assert "tC-r3" not in bed.ns["r"].run(["nft", "list", "ruleset"]).stdout
    assert bed.whoami("p", FIP_A, 7000) == PUBLIC_HOST
    assert bed.ping("a", HOST_B)


@pytest.mark.parametrize("cert", ["-", "rogue"], ids=["no-certificate", "other-ca"])
def test_client_is_refused_at_tls_before_any_http(bed: Bed, cert: str) -> None:
    served = bed.appliance.output().count('"GET /v1/health')
    answer = bed.api("GET", "/v1/health", cert=cert)
    assert answer.status is None
    # TLS 1.3 reports the refused client certificate on the first read: an SSL alert, or
    # the connection closed without an HTTP answer.
    assert answer.error is not None
    assert answer.error.split(":")[0] in {"SSLError", "RemoteDisconnected", "ConnectionResetError"}
    assert bed.appliance.output().count('"GET /v1/health') == served
    assert bed.api("GET", "/v1/health").status == 200


def test_restarted_appliance_reapplies_its_saved_configuration(bed: Bed) -> None:
    bed.appliance.stop()
    assert not bed.appliance.alive()
    bed.start_appliance()
    health = bed.api("GET", "/v1/health").json()
    assert (health["generation"], health["last_result"]) == (2, "applied")
    assert bed.api("GET", "/v1/config").json()["floating_ips"][1]["floating_ip"] == FIP_B
    assert bed.api("PUT", "/v1/config", document(1)).status == 409
    assert bed.whoami("p", FIP_B, 7000) == PUBLIC_HOST
    assert bed.whoami("b", PUBLIC_HOST, 7000) == FIP_B
