"""The appliance-side holes of the security review (issue #12), with a real appliance.

Topology (namespaces and links all start with "sA"):

    sA-m (the orchestrator: fdca:5ec::1, API client, heartbeat listener) --sA-m0/sA-rm--+
    sA-a (a tenant VM: 10.61.0.0/24 by DHCP, 2001:db8:61::5)             --sA-a0/sA-r1--+-- sA-r

The appliance in sA-r listens on its management address fdca:5ec::2 (put there before it
starts, as the netns provider does) and sends heartbeats to [fdca:5ec::1]:5555, where a
listener prints each one's generation. Every test starts its own appliance with a fresh
state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.dnsmasq import DnsmasqPaths
from astara.appliance.engine import STATE_FILE
from astara.appliance.management import MANAGEMENT_TABLE
from astara.common.tls import CertificateAuthority
from astara.providers.netns import ApplianceProcesses, Ip
from astara.testing.netns import Namespace, Process, Topology, wait_for
from astara.wire.defaults import API_PORT
from tests.functional.test_appliance import API_CLIENT

pytestmark = [pytest.mark.functional, pytest.mark.security]

PY = sys.executable
APPLIANCE = str(Path(PY).parent / "astara-appliance")
MGMT_PREFIX = "fdca:5ec::/64"
ORCHESTRATOR, APPLIANCE_IP = "fdca:5ec::1", "fdca:5ec::2"
HEARTBEAT_PORT = 5555
VM4, VM6 = "10.61.0.5", "2001:db8:61::5"
MAC = {"rm": "fa:16:3e:5e:00:01", "r1": "fa:16:3e:5e:00:02", "a0": "fa:16:3e:5e:00:05"}
INSTANCE_ID = "sec-appliance-1"
HEARTBEAT_KEY = "00112233445566778899aabbccddeeff"

# Prints one JSON line per heartbeat: the generation it carries (None: unconfigured).
HEARTBEAT_LISTENER = r"""
import json, socket, struct, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = sock.recvfrom(4096)
    _, flags, _, _, generation, _, _ = struct.unpack_from("!4sBQdQBB", data)
    print(json.dumps({"generation": generation if flags & 1 else None}), flush=True)
"""

# Sends a PUT of SIZE bytes (declared, or chunked) and stops as soon as an answer comes:
# prints the status and how much of the body went out.
BIG_BODY_CLIENT = r"""
import json, select, socket, ssl, sys
host, port, cert, key, ca, mode, size = sys.argv[1:8]
size = int(size)
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
sock = context.wrap_socket(socket.create_connection((host, int(port)), 30), server_hostname=host)
framing = f"Content-Length: {size}" if mode == "declared" else "Transfer-Encoding: chunked"
sock.sendall(
    f"PUT /v1/config HTTP/1.1\r\nHost: [{host}]\r\nContent-Type: application/json\r\n"
    f"{framing}\r\n\r\n".encode()
)
answer = b""
def answered():
    # Readable may only mean TLS records (session tickets): an answer is application data.
    global answer
    if not select.select([sock], [], [], 0)[0]:
        return False
    sock.setblocking(False)
    try:
        answer += sock.recv(65536)
    except ssl.SSLWantReadError:
        pass
    finally:
        sock.settimeout(30)
    return bool(answer)
piece, sent = b" " * 65536, 0
try:
    while sent < size and not answered():
        sock.sendall(piece if mode == "declared" else b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
    if mode == "chunked" and sent >= size:
        sock.sendall(b"0\r\n\r\n")
except OSError:
    pass
while True:
    head, _, body = answer.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if b":" in line)
    if b"content-length" in fields and len(body) >= int(fields[b"content-length"]):
        break
    more = sock.recv(65536)
    if not more:
        break
    answer += more
print(json.dumps({"status": int(answer.split()[1]), "sent": sent, "answer": answer.decode()}))
"""


# PUTs one body N times at once (a thread per request); prints the statuses.
CONCURRENT_CLIENT = r"""
import http.client, json, ssl, sys
from concurrent.futures import ThreadPoolExecutor
host, port, cert, key, ca, count = sys.argv[1:7]
body = sys.stdin.read()
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
def put(_):
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
    conn.request("PUT", "/v1/config", body=body, headers={"Content-Type": "application/json"})
    return conn.getresponse().status
with ThreadPoolExecutor(int(count)) as pool:
    print(json.dumps(list(pool.map(put, range(int(count))))))
"""
API_THREADS = 8  # the appliance's default --api-threads
# Beside them: the event loop, heartbeats, the record-apply timer, a gratuitous-ARP worker.
OTHER_THREADS = 4


def document(generation: int, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "generation": generation,
        "router_id": "router-sec",
        "hostname": "router-sec",
        "interfaces": [{"mac": MAC["rm"]}, {"mac": MAC["r1"]}],
        "networks": [
            {
                "id": "mgmt",
                "kind": "management",
                "interface_mac": MAC["rm"],
                "addresses": [f"{APPLIANCE_IP}/64"],
            },
            {
                "id": "net-a",
                "kind": "internal",
                "interface_mac": MAC["r1"],
                "addresses": ["10.61.0.1/24", "2001:db8:61::1/64"],
                "subnets": [
                    {"id": "a4", "cidr": "10.61.0.0/24", "gateway_ip": "10.61.0.1"},
                    {
                        "id": "a6",
                        "cidr": "2001:db8:61::/64",
                        "gateway_ip": "2001:db8:61::1",
                        "ipv6_ra_mode": "slaac",
                        "ipv6_address_mode": "slaac",
                    },
                ],
                "allocations": [
                    {"port_id": "port-vm", "mac": MAC["a0"], "ips": [VM4], "hostname": "vm-a"}
                ],
            },
        ],
    }
    doc.update(changes)
    return doc


@dataclass
class Answer:
    status: int | None
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Bed:
    topo: Topology
    ns: dict[str, Namespace]
    certs: Path
    beats: Process
    appliance: Process | None = None
    state_dir: Path = field(default_factory=Path)

    def start(self, state_dir: Path) -> Process:
        """Start an appliance on ``state_dir`` and wait for its API."""
        self.state_dir = state_dir
        key_file = self.topo.workdir / "heartbeat.key"
        key_file.write_text(HEARTBEAT_KEY)
        argv = (
            APPLIANCE,
            "--listen", APPLIANCE_IP,
            "--cert", str(self.certs / "server.pem"),
            "--key", str(self.certs / "server.key"),
            "--ca", str(self.certs / "ca.pem"),
            "--state-dir", str(state_dir),
            "--instance-id", INSTANCE_ID,
            "--heartbeat", f"[{ORCHESTRATOR}]:{HEARTBEAT_PORT}",
            "--heartbeat-key-file", str(key_file),
            "--heartbeat-interval", "0.2",
        )  # fmt: skip
        appliance = self.appliance = self.topo.spawn(self.ns["r"], argv)

        def api_up() -> bool:
            assert appliance.alive(), appliance.output()
            return self.api("GET", "/v1/health").status == 200

        wait_for(api_up, 20, "the appliance API")
        return appliance

    def api(self, method: str, path: str, body: Any = None) -> Answer:
        argv = [PY, "-c", API_CLIENT, APPLIANCE_IP, str(API_PORT), method, path]
        argv += ["application/json", *self._client_cert()]
        done = subprocess.run(
            self.ns["m"].argv(argv),
            input="" if body is None else json.dumps(body),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result = json.loads(done.stdout)
        return Answer(result.get("status"), result.get("body", ""))

    def put_big(self, mode: str, size: int) -> dict[str, Any]:
        argv = [PY, "-c", BIG_BODY_CLIENT, APPLIANCE_IP, str(API_PORT), *self._client_cert()]
        done = self.ns["m"].run([*argv, mode, str(size)], timeout=120)
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def _client_cert(self) -> list[str]:
        return [str(self.certs / f) for f in ("client.pem", "client.key", "ca.pem")]

    def heartbeats(self) -> list[int | None]:
        return [json.loads(line)["generation"] for line in self.beats.output().splitlines()]

    def beats_after(self, count: int, how_many: int = 3) -> list[int | None]:
        """Wait for ``how_many`` heartbeats beyond the first ``count``; return them."""
        wait_for(lambda: len(self.heartbeats()) >= count + how_many, 10, "heartbeats")
        return self.heartbeats()[count:]


@pytest.fixture(scope="module")
def topology() -> Iterator[Bed]:
    with Topology("sA") as topo:
        ns = {key: topo.namespace(f"sA-{key}") for key in ("r", "m", "a")}
        topo.veth(ns["r"], "sA-rm", ns["m"], "sA-m0", MAC["rm"])
        topo.veth(ns["r"], "sA-r1", ns["a"], "sA-a0", MAC["r1"], MAC["a0"])
        # As the netns provider does before the appliance starts.
        ns["r"].run(["ip", "addr", "add", f"{APPLIANCE_IP}/64", "dev", "sA-rm", "nodad"])
        ns["m"].run(["ip", "addr", "add", f"{ORCHESTRATOR}/64", "dev", "sA-m0", "nodad"])
        ns["a"].run(["ip", "addr", "add", f"{VM6}/64", "dev", "sA-a0", "nodad"])
        certs = topo.workdir / "certs"
        ca = CertificateAuthority.load_or_create(certs)
        ca.issue("router-sec", "server", ips=[APPLIANCE_IP]).write(
            certs / "server.pem", certs / "server.key"
        )
        ca.issue("orchestrator", "client").write(certs / "client.pem", certs / "client.key")
        beats = topo.spawn(
            ns["m"], [PY, "-c", HEARTBEAT_LISTENER, ORCHESTRATOR, str(HEARTBEAT_PORT)]
        )
        yield Bed(topo, ns, certs, beats)


@pytest.fixture
def bed(topology: Bed, tmp_path: Path) -> Iterator[Bed]:
    """An appliance of its own for each test, configured with generation 1."""
    state_dir = topology.topo.workdir / f"state-{tmp_path.name}"
    topology.start(state_dir)
    answer = topology.api("PUT", "/v1/config", document(1))
    assert answer.status == 200, answer
    try:
        yield topology
    finally:
        assert topology.appliance is not None
        topology.appliance.stop()
        # Its daemons outlive it (their own sessions): stopped by the PIDs it recorded, so
        # the next test's appliance is alone on the interfaces.
        for pid_file in state_dir.rglob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)


# Item 4: tenant data cannot take over the management plane.


def test_routes_and_subnets_into_management_are_refused_with_a_clear_422(bed: Bed) -> None:
    route = document(2, routes=[{"destination": f"{ORCHESTRATOR}/128", "nexthop": VM6}])
    subnet = document(2)
    subnet["networks"][1]["addresses"].append("fdca:5ec::99/64")
    subnet["networks"][1]["subnets"].append({"id": "m6", "cidr": MGMT_PREFIX})
    for doc, expected in (
        (route, {(("routes", 0, "destination"), f"inside the management network {MGMT_PREFIX}")}),
        (
            subnet,
            {
                (("networks", 1, "addresses", 2), f"overlaps the management network {MGMT_PREFIX}"),
                (
                    ("networks", 1, "subnets", 2, "cidr"),
                    f"overlaps the management network {MGMT_PREFIX}",
                ),
            },
        ),
    ):
        answer = bed.api("PUT", "/v1/config", doc)
        assert answer.status == 422, answer
        assert {(tuple(p["loc"]), p["msg"]) for p in answer.json()["detail"]} == expected
    assert bed.api("GET", "/v1/health").json()["generation"] == 1
    routes = bed.ns["r"].run(["ip", "-6", "route", "show", "table", "all"]).stdout
    assert f"{ORCHESTRATOR} via" not in routes and "fdca:5ec::99" not in routes


def test_management_keeps_working_whatever_the_main_table_holds(bed: Bed) -> None:
    router = bed.ns["r"]
    # What an appliance without the checks applied for a tenant: a route to the
    # orchestrator via a tenant VM, and a tenant subnet on the management prefix.
    hostile = (
        ["route", f"{ORCHESTRATOR}/128", "via", VM6, "dev", "sA-r1"],
        ["addr", "fdca:5ec::99/64", "dev", "sA-r1"],
    )
    for what, *args in hostile:
        router.run(["ip", "-6", what, "add", *args, *(["nodad"] if what == "addr" else [])])
    try:
        seen = len(bed.heartbeats())
        assert bed.beats_after(seen)[-1] == 1
        assert bed.api("GET", "/v1/health").status == 200
        path = router.run(["ip", "-6", "route", "get", ORCHESTRATOR]).stdout
        assert "dev sA-rm" in path and f"table {MANAGEMENT_TABLE}" in path, path
        # Nothing the appliance sends from its management address takes the main table.
        from_management = router.run(
            ["ip", "-6", "route", "get", VM6, "from", APPLIANCE_IP], check=False
        )
        assert from_management.returncode != 0, from_management.stdout
    finally:
        for what, *args in hostile:
            router.run(["ip", "-6", what, "del", *args], check=False)


# Fuzz companion: the request threads are bounded in the real server too.


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/PID/status (Threads, VmHWM in KiB, Uid...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_a_burst_of_requests_does_not_grow_threads_beyond_the_bound(bed: Bed) -> None:
    assert bed.appliance is not None
    pid = bed.appliance.pid
    count = 3 * API_THREADS
    argv = [PY, "-c", CONCURRENT_CLIENT, APPLIANCE_IP, str(API_PORT), *bed._client_cert()]
    client = subprocess.Popen(
        bed.ns["m"].argv([*argv, str(count)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    # Each request waits for the engine while one applies: they pile up in the pool.
    assert client.stdin is not None
    client.stdin.write(json.dumps(document(2)))
    client.stdin.close()
    peak = 0
    while client.poll() is None:
        peak = max(peak, proc_status(pid, "Threads"))
    assert client.stdout is not None
    statuses = json.loads(client.stdout.read())
    assert statuses == [200] * count
    assert peak > API_THREADS // 2, f"the burst never reached the pool (peak {peak})"
    assert peak <= API_THREADS + OTHER_THREADS, f"{peak} threads"


# Item 11: request bodies are bounded; a stored document that no longer validates.


@pytest.mark.parametrize("mode", ["declared", "chunked"])
def test_a_60_mb_body_is_refused_with_413_before_it_is_held_in_memory(bed: Bed, mode: str) -> None:
    assert bed.appliance is not None
    before = proc_status(bed.appliance.pid, "VmHWM")
    answer = bed.put_big(mode, 60 * 1024 * 1024)
    assert answer["status"] == 413, answer
    assert "request body larger than 8388608 bytes" in answer["answer"]
    grown_mib = (proc_status(bed.appliance.pid, "VmHWM") - before) / 1024
    # The limit (8 MiB by default) bounds what is held; parsing 60 MB took ~650 MB.
    assert grown_mib < 40, f"peak RSS grew by {grown_mib:.0f} MiB"
    assert answer["sent"] < 60 * 1024 * 1024
    assert bed.api("GET", "/v1/health").json()["generation"] == 1


def test_a_stored_document_that_no_longer_validates_leaves_the_appliance_unconfigured(
    bed: Bed,
) -> None:
    assert bed.appliance is not None
    bed.appliance.stop()
    stored = json.dumps(document(2**64))
    saved = bed.state_dir / STATE_FILE
    saved.write_text(stored)
    seen = len(bed.heartbeats())
    bed.start(bed.state_dir)
    health = bed.api("GET", "/v1/health").json()
    assert health["generation"] is None
    assert "saved configuration refused" in health["last_error"]
    assert "generation" in health["last_error"]
    assert set(bed.beats_after(seen)[-2:]) == {None}
    (kept,) = bed.state_dir.glob(f"{STATE_FILE}.invalid-*")
    assert kept.read_text() == stored
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert not saved.exists()
    assert bed.api("PUT", "/v1/config", document(3)).status == 200
    seen = len(bed.heartbeats())
    assert bed.beats_after(seen)[-1] == 3


# Item 14: tenant data is readable by root and the daemon that needs it, nobody else.


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unreadable_by_nobody(path: Path) -> bool:
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True, text=True
    )
    return done.returncode != 0 and "Permission denied" in done.stderr


def test_files_holding_tenant_data_are_private_and_dhcp_still_reads_them(bed: Bed) -> None:
    state = bed.state_dir
    dhcp = DnsmasqPaths(state / "dhcp", "net-a")
    # dnsmasq (as the unprivileged user it drops to) serves the VM from its private files...
    assert str(bed.topo.dhcp(bed.ns["a"], "sA-a0").ip) == VM4
    # ...and re-reads them after a change, without a restart.
    pid = int(dhcp.pid.read_text())
    moved = document(2)
    moved["networks"][1]["allocations"][0]["ips"] = ["10.61.0.6"]
    assert bed.api("PUT", "/v1/config", moved).status == 200
    assert int(dhcp.pid.read_text()) == pid
    wait_for(lambda: "10.61.0.6" in dhcp.hosts.read_text(), 5, "the new hosts file")
    assert str(bed.topo.dhcp(bed.ns["a"], "sA-a0").ip) == "10.61.0.6"
    assert proc_status(pid, "Uid") == _uid("dnsmasq")

    assert mode_of(state) == 0o711
    assert (mode_of(state / "dhcp"), (state / "dhcp").stat().st_uid) == (0o700, _uid("dnsmasq"))
    assert mode_of(state / "ra") == 0o700
    wait_for((state / STATE_FILE).exists, 5, "the saved document")
    files = [
        state / STATE_FILE,
        dhcp.hosts,
        dhcp.opts,
        dhcp.log,
        dhcp.leases,
        state / "ra" / "radvd.conf",
        state / "ra" / "radvd.log",
    ]
    for path in files:
        assert mode_of(path) & 0o077 == 0, f"{path} is {oct(mode_of(path))}"
        assert unreadable_by_nobody(path), path
    assert "vm-a" in dhcp.hosts.read_text()  # the files checked do hold tenant data


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def test_the_provider_writes_the_appliance_log_private_whatever_the_umask(
    topology: Bed, tmp_path: Path
) -> None:
    # Under the topology's own directory: every parent lets others through.
    directory = topology.topo.workdir / f"provider-{tmp_path.name}"
    directory.mkdir(mode=0o755)
    log = directory / "appliance.log"
    processes = ApplianceProcesses(Ip())
    old = os.umask(0)
    try:
        processes.start("sA-r", ["true"], directory / "appliance.pid", log)
    finally:
        os.umask(old)
    wait_for(lambda: processes.running(directory / "appliance.pid", "true") is None, 5, "true")
    assert mode_of(log) == 0o600
    assert unreadable_by_nobody(log)
