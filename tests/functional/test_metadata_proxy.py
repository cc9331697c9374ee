"""The metadata proxy of a real astara-appliance, asked by VMs in namespaces with real packets.

    tM-m (management: the API client, the Nova double, an "evil" listener) --tM-m0/tM-rm--+
    tM-a (VM a: 10.51.1.5 instance-a, 10.51.1.6 a port that is no instance) --tM-a0/tM-r1--+-- tM-r
    tM-b (VM b: 10.51.2.5 instance-b)                                       --tM-b0/tM-r2--+

Upstream of the proxy runs ``astara.testing.nova_metadata``, a test double of Nova's metadata
API that checks the identity headers as Nova does and records every request it gets (the
proxy is under test, not Nova). The appliance runs with its default limits (ProxyLimits).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.metadata_policy import ProxyLimits
from astara.common.tls import CertificateAuthority
from astara.drivers.metadata import nova_signature
from astara.orchestrator.appliance_client import ApplianceClient, ApplianceError
from astara.testing.netns import Namespace, Process, Topology, inside, wait_for
from astara.testing.nova_metadata import Recorded, records
from astara.wire.document import ApplianceConfig

pytestmark = [pytest.mark.functional, pytest.mark.security]

PY = sys.executable
APPLIANCE = str(Path(PY).parent / "astara-appliance")
MGMT_HOST, MGMT_IP = "192.168.79.1", "192.168.79.2"
VM_A, PLAIN_A, VM_B = "10.51.1.5", "10.51.1.6", "10.51.2.5"
SECRET = "functional-metadata-secret"  # noqa: S105 (a test value)
MAC = {
    "rm": "fa:16:3e:4d:00:01",
    "r1": "fa:16:3e:4d:00:02",
    "r2": "fa:16:3e:4d:00:03",
    "a0": "fa:16:3e:4d:01:05",
    "b0": "fa:16:3e:4d:02:05",
}
LIMITS = ProxyLimits()  # what the appliance runs with
META_DATA = "/openstack/latest/meta_data.json"

# A TCP listener standing for any host the proxy must never reach: one line per connection.
EVIL = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    print("accepted", peer[0], flush=True)
    conn.close()
"""

# Watches VM b's link: a SYN-ACK from the metadata address (answering a source VM a forged)
# or the marker the test sends last (an echo request from the router).
SNIFFER = r"""
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0800))
sock.bind((sys.argv[1], 0))
print("ready", flush=True)
while True:
    frame = sock.recv(2048)
    ip = frame[14:]
    start = (ip[0] & 15) * 4
    if ip[9] == 6 and ip[12:16] == bytes([169, 254, 169, 254]) and ip[start + 13] & 18 == 18:
        print("synack", flush=True)
    if ip[9] == 1 and ip[start] == 8:
        print("marker", flush=True)
"""


def identity(name: str) -> dict[str, str]:
    return {
        "instance_id": f"instance-{name}",
        "project_id": f"project-{name}",
        "signature": nova_signature(SECRET, f"instance-{name}"),
    }


def document(upstream_port: int) -> ApplianceConfig:
    def internal(name: str, index: int, allocations: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": f"net-{name}",
            "kind": "internal",
            "interface_mac": MAC[f"r{index}"],
            "addresses": [f"10.51.{index}.1/24"],
            "subnets": [{"id": f"{name}4", "cidr": f"10.51.{index}.0/24"}],
            "allocations": allocations,
        }

    def port(name: str, mac: str, ip: str, instance: bool) -> dict[str, Any]:
        found = {"port_id": f"port-{name}", "mac": mac, "ips": [ip], "hostname": f"vm-{name}"}
        return {**found, "instance": identity(name)} if instance else found

    return ApplianceConfig.model_validate(
        {
            "generation": 1,
            "router_id": "router-tm",
            "hostname": "router-tm",
            "interfaces": [{"mac": MAC[name]} for name in ("rm", "r1", "r2")],
            "networks": [
                {
                    "id": "mgmt",
                    "kind": "management",
                    "interface_mac": MAC["rm"],
                    "addresses": [f"{MGMT_IP}/24"],
                },
                internal(
                    "a",
                    1,
                    [
                        port("a", MAC["a0"], VM_A, instance=True),
                        port("plain", "fa:16:3e:4d:01:06", PLAIN_A, instance=False),
                    ],
                ),
                internal("b", 2, [port("b", MAC["b0"], VM_B, instance=True)]),
            ],
            "metadata": {"upstream_url": f"http://{MGMT_HOST}:{upstream_port}"},
        }
    )


@dataclass
class Answer:
    status: int | None
    body: bytes
    seconds: float


@dataclass
class Bed:
    topo: Topology
    ns: dict[str, Namespace]
    appliance: Process
    certs: Path
    record: Path

    def client(self) -> ApplianceClient:
        return ApplianceClient(
            MGMT_IP,
            ca=self.certs / "ca.pem",
            cert=self.certs / "client.pem",
            key=self.certs / "client.key",
            timeout=5,
        )

    def api_health_seconds(self) -> float:
        started = time.monotonic()
        with inside("tM-m"), self.client() as client:
            assert client.health().generation == 1
        return time.monotonic() - started

    def ask(self, vm: str, raw: bytes, source: str | None = None, timeout: float = 5) -> Answer:
        """Send raw bytes from a VM to 169.254.169.254:80; the answer until the proxy closes."""
        started = time.monotonic()
        with inside(f"tM-{vm}"):
            sock = socket.create_connection(
                ("169.254.169.254", 80), timeout, (source, 0) if source else None
            )
        answer = b""
        with sock, contextlib.suppress(ConnectionResetError):  # closed without an answer
            sock.sendall(raw)
            while data := sock.recv(65536):
                answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
        return Answer(status, body, time.monotonic() - started)

    def get(self, vm: str, path: str, headers: str = "", source: str | None = None) -> Answer:
        request = f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{headers}Connection: close\r\n"
        return self.ask(vm, request.encode() + b"\r\n", source)

    def recorded(self) -> list[Recorded]:
        return records(self.record)

    def threads(self) -> int:
        return len(list(Path(f"/proc/{self.appliance.pid}/task").iterdir()))

    def counter(self, comment: str) -> int:
        listing = json.loads(self.ns["r"].run(["nft", "-j", "list", "ruleset"]).stdout)
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment") == comment:
                return int(next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e))
        raise AssertionError(f"no rule with comment {comment}")


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with Topology("tM") as topo:
        ns = {key: topo.namespace(f"tM-{key}") for key in ("r", "m", "a", "b")}
        topo.veth(ns["r"], "tM-rm", ns["m"], "tM-m0", MAC["rm"])
        topo.veth(ns["r"], "tM-r1", ns["a"], "tM-a0", MAC["r1"], MAC["a0"])
        topo.veth(ns["r"], "tM-r2", ns["b"], "tM-b0", MAC["r2"], MAC["b0"])
        ns["r"].run(["ip", "addr", "add", f"{MGMT_IP}/24", "dev", "tM-rm"])
        ns["m"].run(["ip", "addr", "add", f"{MGMT_HOST}/24", "dev", "tM-m0"])
        for vm, link, addresses in (("a", "tM-a0", [VM_A, PLAIN_A]), ("b", "tM-b0", [VM_B])):
            for address in addresses:
                ns[vm].run(["ip", "addr", "add", f"{address}/24", "dev", link])
            gateway = addresses[0].rsplit(".", 1)[0] + ".1"
            ns[vm].run(["ip", "route", "add", "default", "via", gateway])

        certs = topo.workdir / "certs"
        ca = CertificateAuthority.load_or_create(certs)
        ca.issue("router-tm", "server", ips=[MGMT_IP]).write(
            certs / "server.pem", certs / "server.key"
        )
        ca.issue("orchestrator", "client").write(certs / "client.pem", certs / "client.key")

        (topo.workdir / "secret").write_text(SECRET)
        record = topo.workdir / "nova.jsonl"
        double = topo.spawn(
            ns["m"],
            [
                *(PY, "-m", "astara.testing.nova_metadata", "--listen", MGMT_HOST),
                *("--secret-file", str(topo.workdir / "secret"), "--record", str(record)),
            ],
        )
        port = int(str(wait_for(lambda: double.output().strip(), 10, "the Nova double's port")))
        appliance = topo.spawn(
            ns["r"],
            [
                *(APPLIANCE, "--listen", MGMT_IP, "--state-dir", str(topo.workdir / "state")),
                *("--cert", str(certs / "server.pem"), "--key", str(certs / "server.key")),
                *("--ca", str(certs / "ca.pem")),
            ],
        )
        bed = Bed(topo, ns, appliance, certs, record)
        with inside("tM-m"), bed.client() as client:
            wait_for(lambda: _answers(client), 20, "the appliance API")
            client.put_config(document(port))
        yield bed
        if not appliance.alive():
            print(appliance.output())


def _answers(client: ApplianceClient) -> bool:
    try:
        client.health()
    except ApplianceError:
        return False
    return True


def test_each_vm_gets_its_own_identity_whatever_identity_it_claims(bed: Bed) -> None:
    # VM a claims to be instance-b, with instance-b's valid signature (the strongest forgery).
    forged = "".join(
        f"{name}: {value}\r\n"
        for name, value in (
            ("X-Instance-ID", "instance-b"),
            ("X-Tenant-ID", "project-b"),
            ("X-Instance-ID-Signature", identity("b")["signature"]),
            ("X-Forwarded-For", VM_B),
            ("Forwarded", f"for={VM_B}"),
            ("X-Real-IP", VM_B),
            ("X-Metadata-Provider", "lb"),
            ("X-Astara-Router-ID", "another-router"),
        )
    )
    before = len(bed.recorded())
    a = bed.get("a", META_DATA, forged)
    b = bed.get("b", META_DATA)
    assert (a.status, json.loads(a.body)) == (
        200,
        {"uuid": "instance-a", "project_id": "project-a"},
    )
    assert (b.status, json.loads(b.body)) == (
        200,
        {"uuid": "instance-b", "project_id": "project-b"},
    )
    seen_a, seen_b = bed.recorded()[before:]
    for seen, vm, name in ((seen_a, VM_A, "a"), (seen_b, VM_B, "b")):
        assert seen.path == META_DATA
        assert seen.header("x-instance-id") == [f"instance-{name}"]
        assert seen.header("x-tenant-id") == [f"project-{name}"]
        assert seen.header("x-instance-id-signature") == [identity(name)["signature"]]
        assert seen.header("x-forwarded-for") == [vm]
        for dropped in ("forwarded", "x-real-ip", "x-metadata-provider", "x-astara-router-id"):
            assert seen.header(dropped) == []


def test_a_port_that_is_no_instance_gets_404_and_nova_is_not_asked(bed: Bed) -> None:
    before = len(bed.recorded())
    answer = bed.get("a", META_DATA, source=PLAIN_A)
    assert answer.status == 404
    assert b"no Nova instance has address 10.51.1.6" in answer.body
    # The proxy answers only after Nova did for the requests it forwards: nothing went.
    assert len(bed.recorded()) == before


def test_a_source_spoofed_from_another_network_is_dropped(bed: Bed) -> None:
    sniffer = bed.topo.spawn(bed.ns["b"], [PY, "-u", "-c", SNIFFER, "tM-b0"])
    wait_for(lambda: "ready" in sniffer.output(), 10, "the sniffer on VM b's link")
    dropped = bed.counter("metadata-spoofed")
    bed.ns["a"].run(["ip", "addr", "add", f"{VM_B}/32", "dev", "tM-a0"])
    try:
        with pytest.raises(TimeoutError):
            bed.ask("a", b"", source=VM_B, timeout=1)  # VM a posing as VM b
    finally:
        bed.ns["a"].run(["ip", "addr", "del", f"{VM_B}/32", "dev", "tM-a0"])
    assert bed.counter("metadata-spoofed") > dropped
    # Anything the SYN caused has reached VM b's link before the marker sent after it.
    bed.ns["r"].run(["ping", "-c", "1", "-W", "2", VM_B])
    wait_for(lambda: "marker" in sniffer.output(), 10, "the marker on VM b's link")
    assert "synack" not in sniffer.output()
    # VM b itself is still served.
    assert bed.get("b", META_DATA).status == 200


SSRF_TARGETS = [
    "@{evil}/x",
    "@{evil}",
    "http://{evil}/x",
    "//{evil}/x",
    "/@{evil}/x",
    "\\\\{evil}\\x",
    "/..%2f..%2f@{evil}",
]


def test_ssrf_targets_never_reach_another_host(bed: Bed) -> None:
    evil = bed.topo.spawn(bed.ns["m"], [PY, "-u", "-c", EVIL, MGMT_HOST, "5672"])
    wait_for(lambda: "ready" in evil.output(), 10, "the evil listener")
    before = len(bed.recorded())
    for target in SSRF_TARGETS:
        aimed = target.format(evil=f"{MGMT_HOST}:5672")
        answer = bed.ask("a", f"GET {aimed} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert answer.status == 400, (aimed, answer)
    # Positive signal: a connection of our own reaches the listener and is logged...
    with inside("tM-m"):
        socket.create_connection((MGMT_HOST, 5672), 5).close()
    wait_for(lambda: "accepted" in evil.output(), 10, "the marker connection")
    # ...and it is the only one: the proxy connected neither there nor to Nova.
    assert evil.output().count("accepted") == 1, evil.output()
    assert len(bed.recorded()) == before


@pytest.mark.parametrize("length", ["-1", "abc", "99999", "1, 2", "0x10"])
def test_bad_content_length_is_400_and_not_forwarded(bed: Bed, length: str) -> None:
    before = len(bed.recorded())
    answer = bed.ask(
        "a",
        f"POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: {length}"
        "\r\n\r\nabc".encode(),
    )
    assert answer.status == 400, answer
    assert len(bed.recorded()) == before


def test_a_slow_loris_is_cut_off_at_the_client_timeout(bed: Bed) -> None:
    started = time.monotonic()
    with inside("tM-a"):
        sock = socket.create_connection(("169.254.169.254", 80), 30)
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        try:
            while time.monotonic() - started < 3 * LIMITS.client_timeout:
                sock.sendall(b"X-a: b\r\n")  # a header line a second, never the blank line
                sock.settimeout(1)
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                answer += data
                if not data:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert LIMITS.client_timeout - 0.5 < took < LIMITS.client_timeout + 3


def test_idle_connections_grow_no_threads_and_the_api_still_answers(bed: Bed) -> None:
    # The proxy's threads, and the API's worker thread, exist from these on.
    assert bed.get("a", META_DATA).status == 200
    bed.api_health_seconds()
    threads = bed.threads()
    with inside("tM-a"):
        idle = [socket.create_connection(("169.254.169.254", 80), 5) for _ in range(300)]
    try:
        # Those beyond the bound are answered 503 and closed at once: a positive signal that
        # the proxy has seen all 300.
        busy = 0
        for sock in idle[LIMITS.max_connections :]:
            sock.settimeout(5)
            busy += sock.recv(100).startswith(b"HTTP/1.1 503 ")
        assert busy == 300 - LIMITS.max_connections
        assert bed.threads() <= threads
        assert bed.api_health_seconds() < 2
        # Every slot is taken, by a's idlers: b is turned away at once (503, or a bare close
        # while too many turned-away connections linger already).
        turned_away = bed.get("b", META_DATA)
        assert turned_away.status in (503, None) and turned_away.seconds < 1
        # The idle ones are closed at the client timeout, and the slots come back.
        idle[0].settimeout(LIMITS.client_timeout + 3)
        assert idle[0].recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: bed.get("b", META_DATA).status == 200, 5, "a free slot again")
    assert bed.threads() <= threads
