"""Apply benchmark: Astara's packet filter, NAT and addresses against the Neutron L3 agent's way.

    .venv/bin/python bench/apply.py [--runs N] [--peer-runs M] [--adversarial-runs K]  (root)

A router with 1,000 floating IPs and 5,000 firewall rules (a neutron-fwaas group on its
inside port, rendered from the FWaaS API's shape by the router driver) is applied from empty
(nft ruleset through NftablesSubsystem, 1,000 /32 addresses through LinksSubsystem's one
netlink socket),
then one floating IP is added (a map-element delta plus one address). Both documents are read
from JSON as the appliance's API reads them (the second against the first: its unchanged
sections are the first's objects); the delta's read is timed on its own, beside the apply.
NAT element changes go over netlink as the appliance sends them. The same router goes through
bench/neutron_l3_peer.py under the Neutron venv's python: the L3 agent's NAT and addresses,
and neutron-fwaas 25's own L3 agent driver for the same group's rules.
Then the same with an adversarial rule set of the same size that folds into no set (each
rule's action differs from its neighbours', each has its own protocol, CIDRs and ports), K
runs of each side (default 5). Medians of N runs of Astara (default 15) and M of the peer
(default 5, each takes tens of seconds). Astara's
background record after each answer (the document saved and digested, the live state read
back for drift checks) is timed on its own: its median is a detail line.
An established TCP connection through a floating IP is checked across a full re-apply and a
delta. Progress goes to stderr; the last stdout line is the summary.

Namespaces and links are all ``tA-b*`` and are deleted at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from astara.drivers.firewall import (
    NeutronFirewallGroup,
    NeutronFirewallPolicy,
    NeutronFirewallRule,
    firewall_groups,
)
from astara.testing.neutron_bed import ensure_venv
from astara.wire.document import ApplianceConfig

ROUTER, OUTSIDE, INSIDE, PEER = "tA-br", "tA-bo", "tA-bi", "tA-bn"
# The inside network's router port: neutron-fwaas's driver names its interface "qr-" + the
# port id, cut to 14 characters; the peer's namespace has that interface.
PEER_PORT = "bench-inside-port"
PEER_INSIDE = ("qr-" + PEER_PORT)[:14]
NAMESPACES = (ROUTER, OUTSIDE, INSIDE, PEER)
MGMT_MAC, EXT_MAC, INT_MAC, INT2_MAC = (f"02:bb:00:00:00:0{n}" for n in range(1, 5))
LINKS = {MGMT_MAC: "tA-brm", EXT_MAC: "tA-bre", INT_MAC: "tA-bri", INT2_MAC: "tA-brj"}
GATEWAY_CIDR = "172.24.255.254/16"
OUTSIDE_IP, INSIDE_IP = "172.24.255.1", "10.0.0.1"
ECHO_PORT = 7000
HERE = Path(__file__).resolve().parent

# Echoes lines (runs on the inside host).
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(conn):
        with conn, conn.makefile("rw") as f:
            for line in f:
                f.write(line); f.flush()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4)
    print("ready", flush=True)
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
    """
)
# Sends a line every 20 ms until stdin closes; prints sent/echoed counts and the worst RTT.
ECHO_CLIENT = textwrap.dedent(
    """
    import json, select, socket, sys, time
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    f = conn.makefile("rw")
    sent = echoed = 0; worst = 0.0; error = None
    print("connected", flush=True)
    while not select.select([sys.stdin], [], [], 0.02)[0]:
        try:
            start = time.perf_counter(); f.write(f"{sent}\\n"); f.flush(); sent += 1
            if f.readline().strip() == str(sent - 1):
                echoed += 1
            worst = max(worst, time.perf_counter() - start)
        except OSError as exc:
            error = str(exc); break
    print(json.dumps({"sent": sent, "echoed": echoed, "worst_rtt": worst, "error": error}))
    """
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the document -----------------------------------------------------------------------


def fip_pair(n: int) -> tuple[str, str]:
    return f"172.24.{n // 250}.{n % 250 + 1}", f"10.0.{n // 250}.{n % 250 + 1}"


def firewall_rules(count: int) -> list[dict[str, Any]]:
    """neutron-fwaas rules (the API's shape): blocks of denies and allows, interleaved so that
    folding must respect rule order."""
    rules: list[dict[str, Any]] = []
    deny = tcp = udp = 0
    block = max(count // 25, 1)  # 5 blocks of 1 deny : 2 tcp allow : 2 udp allow
    while len(rules) < count:
        for _ in range(block):
            rules.append(
                {"action": "deny", "source_ip_address": f"198.{18 + deny // 256}.{deny % 256}.0/24"}
            )
            deny += 1
        for _ in range(block * 2):
            # The first one lets the benchmark's own TCP flow in.
            port = ECHO_PORT if tcp == 0 else 1000 + tcp % 1000
            rules.append(
                {
                    "action": "allow",
                    "protocol": "tcp",
                    "destination_ip_address": f"10.0.{tcp // 250}.{tcp % 250 + 1}",
                    "destination_port": str(port),
                }
            )
            tcp += 1
        for _ in range(block * 2):
            rules.append(
                {
                    "action": "allow",
                    "protocol": "udp",
                    "source_ip_address": f"10.1.{udp % 250}.0/24",
                    "destination_ip_address": f"100.64.{udp // 8}.0/24",
                    "destination_port": str(2000 + udp % 8),
                }
            )
            udp += 1
    return [dict(rule, id=f"r{n}") for n, rule in enumerate(rules[:count])]


def adversarial_rules(count: int) -> list[dict[str, Any]]:
    """neutron-fwaas rules that fold into no set: every rule's action differs from its
    neighbours' and each has its own protocol, source, destination and port combination."""
    rules: list[dict[str, Any]] = [
        # The benchmark's own TCP flow.
        {
            "action": "allow",
            "protocol": "tcp",
            "destination_ip_address": INSIDE_IP,
            "destination_port": str(ECHO_PORT),
        }
    ]
    for n in range(1, count):
        protocol = ("tcp", "udp", None, "icmp")[n % 4]
        rule: dict[str, Any] = {
            "action": ("deny", "allow")[n % 2],
            "protocol": protocol,
            "source_ip_address": f"10.{100 + n % 50}.{n // 50 % 256}.0/{24 + n % 9}",
            "destination_ip_address": f"10.0.{n // 250}.{n % 250 + 1}",
        }
        if protocol in ("tcp", "udp"):
            first = 1024 + (n * 7) % 60000
            rule["destination_port"] = f"{first}:{first + n % 5}" if n % 3 else str(first)
            if n % 5 == 0:
                rule["source_port"] = str(30000 + n)
        rules.append(rule)
    return [dict(rule, id=f"a{n}") for n, rule in enumerate(rules)]


RULE_SETS = {"friendly": firewall_rules, "adversarial": adversarial_rules}


def firewall_section(rules: int, kind: str = "friendly") -> dict[str, Any]:
    """A neutron-fwaas group on the router's port to the benchmark's inside network, its
    ingress policy holding the rules, rendered by the router driver as for a real router."""
    neutron_rules = [NeutronFirewallRule.model_validate(r) for r in RULE_SETS[kind](rules)]
    policy = NeutronFirewallPolicy(id="bench-in", firewall_rules=[r.id for r in neutron_rules])
    group = NeutronFirewallGroup(
        id="bench", ports=["port-i1"], ingress_firewall_policy_id="bench-in"
    )
    rendered = firewall_groups([group], [policy], neutron_rules, {"port-i1": INT_MAC})
    return {"groups": [g.model_dump() for g in rendered.groups]}


def build_document(
    fips: int, rules: int, generation: int = 1, extra_fip: bool = False, kind: str = "friendly"
) -> ApplianceConfig:
    pairs = [fip_pair(n) for n in range(fips + (1 if extra_fip else 0))]
    return ApplianceConfig.model_validate(
        {
            "generation": generation,
            "router_id": "bench",
            "hostname": "bench",
            "interfaces": [{"mac": mac} for mac in LINKS],
            "networks": [
                {
                    "id": "m",
                    "kind": "management",
                    "interface_mac": MGMT_MAC,
                    "addresses": ["192.168.254.2/24"],
                },
                {
                    "id": "e",
                    "kind": "external",
                    "interface_mac": EXT_MAC,
                    "addresses": [GATEWAY_CIDR],
                    "subnets": [{"id": "es", "cidr": "172.24.0.0/16", "gateway_ip": OUTSIDE_IP}],
                },
                {
                    "id": "i1",
                    "kind": "internal",
                    "interface_mac": INT_MAC,
                    "addresses": ["10.0.255.254/16"],
                    "subnets": [{"id": "s1", "cidr": "10.0.0.0/16"}],
                },
                {
                    "id": "i2",
                    "kind": "internal",
                    "interface_mac": INT2_MAC,
                    "addresses": ["10.1.255.254/16"],
                    "subnets": [{"id": "s2", "cidr": "10.1.0.0/16"}],
                },
            ],
            "floating_ips": [{"floating_ip": f, "fixed_ip": x} for f, x in pairs],
            "firewall": firewall_section(rules, kind),
        }
    )


# --- the worker: runs inside the router namespace ----------------------------------------


class NoAnnouncements:
    """Gratuitous ARP is left out on both sides (the Neutron peer does not send it either)."""

    def announce(self, addresses: object) -> None:
        return None


def worker(fips: int, rules: int, runs: int, kind: str) -> None:
    from astara.appliance.conntrack import ConntrackSubsystem
    from astara.appliance.engine import RECORD_DELAY, Engine
    from astara.appliance.intake import DocumentReader
    from astara.appliance.management import ManagementDomain
    from astara.appliance.nat_netlink import NetlinkElements
    from astara.appliance.netlink import LinksSubsystem
    from astara.appliance.nftables import TABLES, NftablesSubsystem, render_ruleset
    from astara.appliance.status import KernelLiveState

    base = build_document(fips, rules, kind=kind)
    plus_one = build_document(fips, rules, generation=2, extra_fip=True, kind=kind)
    # Each run's documents are read from JSON as PUT /v1/config reads them (the second one
    # against the first, applied: its unchanged sections are the first one's objects).
    texts = [doc.model_dump_json().encode() for doc in (base, plus_one)]
    # As the appliance runs it: management in its own routing domain.
    links = LinksSubsystem(garp=NoAnnouncements(), management=ManagementDomain())  # type: ignore[arg-type]
    firewall = NftablesSubsystem(elements=NetlinkElements())  # as the appliance runs it

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    start = time.perf_counter()
    render_ruleset(base, LINKS)
    render_time = time.perf_counter() - start
    timings: dict[str, list[float]] = {
        k: [] for k in ("full", "delta", "record_full", "record_delta", "read_delta")
    }
    for run in range(runs):
        reader = DocumentReader()
        first = reader.read(json.loads(texts[0]), None)
        t_read = time.perf_counter()
        second = reader.read(json.loads(texts[1]), first)
        timings["read_delta"].append(time.perf_counter() - t_read)
        firewall.apply(None, base, LINKS)
        links.apply(None, base, LINKS)
        # Through the appliance's own engine, as a PUT runs it (the engine also saves the
        # document and fingerprints the live state, just after answering).
        with tempfile.TemporaryDirectory() as state:
            engine = Engine(
                [links, firewall, ConntrackSubsystem()],
                Path(state),
                lambda macs: {mac: LINKS[mac] for mac in macs if mac in LINKS},
                KernelLiveState(firewall.runner.list_json, TABLES, Path(state), firewall.versions),
            )
            t0 = time.perf_counter()
            engine.apply(first)
            t2 = time.perf_counter()
            engine.wait_recorded(30)
            t2b = time.perf_counter()
            engine.apply(second)
            t4 = time.perf_counter()
            engine.wait_recorded(30)
            t5 = time.perf_counter()
        timings["full"].append(t2 - t0)
        timings["delta"].append(t4 - t2b)
        # The record starts RECORD_DELAY after the answer, on purpose: that wait is not its cost.
        timings["record_full"].append(t2b - t2 - RECORD_DELAY)
        timings["record_delta"].append(t5 - t4 - RECORD_DELAY)
        say({"event": "run", "run": run + 1, **{k: v[-1] for k, v in timings.items()}})
    say({"event": "timings", "render": render_time, **timings})

    # Connection survival: back to the base document, then let the flow start.
    links.apply(base, plus_one, LINKS)
    firewall.apply(base, plus_one, LINKS)
    say({"event": "ready"})
    sys.stdin.readline()
    # A firewall change forces a full replace; then a one-FIP delta.
    changed = base.model_copy(
        update={
            "generation": 3,
            "firewall": base.firewall.model_copy(
                update={
                    "groups": [
                        group.model_copy(update={"ingress": group.ingress[:-1]})
                        for group in base.firewall.groups
                    ]
                }
            ),
        }
    )
    links.apply(changed, base, LINKS)
    t0 = time.perf_counter()
    firewall.apply(changed, base, LINKS)
    t1 = time.perf_counter()
    with_fip = changed.model_copy(update={"generation": 4, "floating_ips": plus_one.floating_ips})
    links.apply(with_fip, changed, LINKS)
    firewall.apply(with_fip, changed, LINKS)
    t2 = time.perf_counter()
    say({"event": "applied", "full_nft": t1 - t0, "delta": t2 - t1})
    sys.stdin.readline()
    firewall.apply(None, with_fip, LINKS)
    links.apply(None, with_fip, LINKS)
    links.close()


# --- the test bed and the main run --------------------------------------------------------


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def cleanup() -> None:
    for ns in NAMESPACES:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@contextmanager
def testbed() -> Iterator[None]:
    cleanup()
    try:
        for ns in NAMESPACES:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        r = ("ip", "-n", ROUTER, "link", "add")
        sh(*r, "tA-bre", "address", EXT_MAC, "type", "veth", "peer", "tA-boe", "netns", OUTSIDE)
        sh(*r, "tA-bri", "address", INT_MAC, "type", "veth", "peer", "tA-bie", "netns", INSIDE)
        # No dummy driver on this host: veths whose peers stay in the router stand for NICs.
        sh(*r, "tA-brm", "address", MGMT_MAC, "type", "veth", "peer", "tA-brmp")
        sh(*r, "tA-brj", "address", INT2_MAC, "type", "veth", "peer", "tA-brjp")
        for dev in ("tA-brmp", "tA-brjp"):
            sh("ip", "-n", ROUTER, "link", "set", dev, "up")
        for ns, dev, cidr, via in (
            (OUTSIDE, "tA-boe", f"{OUTSIDE_IP}/16", None),
            (INSIDE, "tA-bie", f"{INSIDE_IP}/16", "10.0.255.254"),
        ):
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            if via:
                sh("ip", "-n", ns, "route", "add", "default", "via", via)
        sh("ip", "-n", PEER, "link", "add", "tA-bng", "type", "veth", "peer", "tA-bngp")
        sh("ip", "-n", PEER, "link", "add", PEER_INSIDE, "type", "veth", "peer", "tA-bnqp")
        for dev in ("tA-bng", "tA-bngp", PEER_INSIDE, "tA-bnqp"):
            sh("ip", "-n", PEER, "link", "set", dev, "up")
        sh("ip", "-n", PEER, "addr", "add", GATEWAY_CIDR, "dev", "tA-bng")
        yield
    finally:
        cleanup()


def in_ns(ns: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], text=True, **kwargs)


def read_event(proc: subprocess.Popen[str], event: str) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker ended before {event!r}")
        message: dict[str, Any] = json.loads(line)
        if message["event"] == "run":
            ms = {k: message[k] * 1000 for k in ("delta", "record_full", "record_delta")}
            log(
                f"astara run {message['run']}: full {message['full']:.3f} s, "
                f"delta {ms['delta']:.1f} ms (then recorded in the background: "
                f"{ms['record_full']:.0f} ms and {ms['record_delta']:.0f} ms)"
            )
        if message["event"] == event:
            return message


def run_astara(fips: int, rules: int, runs: int, scripts: Path, kind: str) -> dict[str, Any]:
    server = in_ns(
        INSIDE, sys.executable, str(scripts / "server.py"), str(ECHO_PORT), stdout=subprocess.PIPE
    )
    work = in_ns(
        ROUTER,
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--fips",
        str(fips),
        "--rules",
        str(rules),
        "--runs",
        str(runs),
        "--kind",
        kind,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        timings = read_event(work, "timings")
        read_event(work, "ready")
        floating, _ = fip_pair(0)
        client = in_ns(
            OUTSIDE,
            sys.executable,
            str(scripts / "client.py"),
            floating,
            str(ECHO_PORT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert client.stdout is not None and client.stdin is not None and work.stdin is not None
        if client.stdout.readline().strip() != "connected":
            raise RuntimeError("the TCP flow through the floating IP did not connect")
        time.sleep(0.3)
        work.stdin.write("go\n")
        work.stdin.flush()
        applied = read_event(work, "applied")
        time.sleep(0.3)
        client.stdin.close()
        flow = json.loads(client.stdout.readline())
        work.stdin.write("end\n")
        work.stdin.flush()
        work.wait(timeout=60)
        log(
            f"TCP flow across a full re-apply ({applied['full_nft'] * 1000:.1f} ms) and a delta "
            f"({applied['delta'] * 1000:.1f} ms): {flow['echoed']}/{flow['sent']} echoed, "
            f"worst RTT {flow['worst_rtt'] * 1000:.1f} ms, error {flow['error']}"
        )
        timings["flow_survived"] = flow["error"] is None and flow["echoed"] == flow["sent"] > 10
        return timings
    finally:
        for proc in (client, work, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def run_peer(fips: int, rules: int, runs: int, scripts: Path, kind: str) -> dict[str, Any]:
    spec = {
        "namespace": PEER,
        "gateway_interface": "tA-bng",
        "gateway_cidr": GATEWAY_CIDR,
        "gateway_ip": GATEWAY_CIDR.split("/")[0],
        "fips": [list(fip_pair(n)) for n in range(fips)],
        "delta_fip": list(fip_pair(fips)),
        # The same group's rules in neutron-fwaas's own shape, for its L3 agent driver.
        "firewall_port": PEER_PORT,
        "rules": [dict(rule, enabled=True, ip_version=4) for rule in RULE_SETS[kind](rules)],
        "runs": runs,
    }
    (scripts / "peer.json").write_text(json.dumps(spec))
    neutron_python = ensure_venv() / "bin/python"  # the Neutron test bed's venv
    done = subprocess.run(
        [str(neutron_python), str(HERE / "neutron_l3_peer.py"), str(scripts / "peer.json")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="Astara's runs (at least 5)")
    parser.add_argument("--peer-runs", type=int, default=5, help="the peer's runs (at least 5)")
    parser.add_argument(
        "--adversarial-runs",
        type=int,
        default=5,
        help="runs of each side with the rule set that does not fold (at least 3)",
    )
    parser.add_argument("--fips", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=5000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--kind", choices=sorted(RULE_SETS), default="friendly", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.fips, args.rules, args.runs, args.kind)
        return
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    runs, peer_runs = max(args.runs, 5), max(args.peer_runs, 5)
    hard_runs = max(args.adversarial_runs, 3)
    with tempfile.TemporaryDirectory(prefix="tA-bench-") as tmp, testbed():
        scripts = Path(tmp)
        (scripts / "server.py").write_text(ECHO_SERVER)
        (scripts / "client.py").write_text(ECHO_CLIENT)
        log(f"astara: {args.fips} floating IPs, {args.rules} firewall rules, {runs} runs")
        ours = run_astara(args.fips, args.rules, runs, scripts, "friendly")
        log(f"render alone: {ours['render'] * 1000:.1f} ms")
        log(f"neutron peer: {peer_runs} runs (each takes tens of seconds)")
        peer = run_peer(args.fips, args.rules, peer_runs, scripts, "friendly")
        log(f"adversarial rule set (folds into no set): {hard_runs} runs of each")
        hard = run_astara(args.fips, args.rules, hard_runs, scripts, "adversarial")
        hard_peer = run_peer(args.fips, args.rules, hard_runs, scripts, "adversarial")
    full, delta = statistics.median(ours["full"]), statistics.median(ours["delta"])
    log(
        f"astara record after the answer (save, digest, live state read back), medians: "
        f"{statistics.median(ours['record_full']) * 1000:.0f} ms after a full apply, "
        f"{statistics.median(ours['record_delta']) * 1000:.1f} ms after a one-FIP delta; "
        f"reading the one-FIP document from JSON against the applied one (before the apply): "
        f"{statistics.median(ours['read_delta']) * 1000:.1f} ms; "
        f"connection survived: {ours['flow_survived']} (adversarial: {hard['flow_survived']})"
    )
    peer_full, peer_delta = peer["full_median"], peer["delta_median"]
    hard_full, hard_peer_full = statistics.median(hard["full"]), hard_peer["full_median"]
    print(
        f"apply: full {full:.3f} s, delta {delta * 1000:.1f} ms; "
        f"peer full {peer_full:.3f} s, delta {peer_delta * 1000:.1f} ms; "
        f"ratio full {peer_full / full:.1f}, delta {peer_delta / delta:.1f}; "
        f"adversarial full {hard_full:.3f} s, peer {hard_peer_full:.3f} s, "
        f"ratio {hard_peer_full / hard_full:.1f}"
    )


if __name__ == "__main__":
    main()
