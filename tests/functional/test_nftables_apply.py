"""NftablesSubsystem against real packets: a router namespace between an outside host and a
LAN with two inside hosts on one bridge (so that hairpin NAT is the same-subnet case).

    tA-fo (172.24.0.254) --- tA-fr [ext 172.24.0.1, FIP .10, PF .20 | int 10.0.0.1]
                                      |
                                    tA-fl bridge --- tA-fh1 (10.0.0.5)  tA-fh2 (10.0.0.6)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.nft_runner import NftCli
from astara.appliance.nftables import TABLES, NftablesSubsystem, render_ruleset
from astara.appliance.status import KernelLiveState
from astara.appliance.subsystem import ApplyStepError
from astara.wire.document import ApplianceConfig

pytestmark = pytest.mark.functional

ROUTER, OUTSIDE, LAN, HOST1, HOST2 = "tA-fr", "tA-fo", "tA-fl", "tA-fh1", "tA-fh2"
NAMESPACES = (ROUTER, OUTSIDE, LAN, HOST1, HOST2)
MGMT_MAC, EXT_MAC, INT_MAC = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
LINKS = {MGMT_MAC: "tA-frm", EXT_MAC: "tA-fre", INT_MAC: "tA-fri"}
PORT = 7000

# Greets with "<peer address> <local address>", then echoes lines until the peer closes.
SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(conn):
        with conn, conn.makefile("rw") as f:
            f.write(f"{conn.getpeername()[0]} {conn.getsockname()[0]}\\n"); f.flush()
            for line in f:
                f.write(line); f.flush()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
    print("ready", flush=True)
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
    """
)
# Connects, prints the greeting, then relays stdin lines and prints the echoes.
CLIENT = textwrap.dedent(
    """
    import socket, sys
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    f = conn.makefile("rw")
    print(f.readline().strip(), flush=True)
    for line in sys.stdin:
        f.write(line); f.flush(); print(f.readline().strip(), flush=True)
    """
)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def in_ns(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, *args)


def cleanup() -> None:
    for ns in NAMESPACES:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cleanup()
    scripts = tmp_path_factory.mktemp("tA-nft")
    (scripts / "server.py").write_text(SERVER)
    (scripts / "client.py").write_text(CLIENT)
    servers: list[subprocess.Popen[str]] = []
    try:
        for ns in NAMESPACES:
            sh("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        r = ["ip", "-n", ROUTER]
        # No dummy driver here: a veth whose peer stays in the router stands for the NIC.
        sh(*r, "link", "add", "tA-frm", "address", MGMT_MAC, "type", "veth", "peer", "tA-frmp")
        sh(
            *r,
            "link",
            "add",
            "tA-fre",
            "address",
            EXT_MAC,
            "type",
            "veth",
            "peer",
            "tA-foe",
            "netns",
            OUTSIDE,
        )
        sh(
            *r,
            "link",
            "add",
            "tA-fri",
            "address",
            INT_MAC,
            "type",
            "veth",
            "peer",
            "tA-fli",
            "netns",
            LAN,
        )
        sh("ip", "-n", LAN, "link", "add", "tA-flbr", "type", "bridge")
        for n, host in ((1, HOST1), (2, HOST2)):
            sh(
                "ip",
                "-n",
                LAN,
                "link",
                "add",
                f"tA-fl{n}",
                "type",
                "veth",
                "peer",
                f"tA-fh{n}i",
                "netns",
                host,
            )
        for dev in ("tA-fli", "tA-fl1", "tA-fl2"):
            sh("ip", "-n", LAN, "link", "set", dev, "master", "tA-flbr", "up")
        sh("ip", "-n", LAN, "link", "set", "tA-flbr", "up")
        for dev, addrs in (
            ("tA-frm", ["192.168.254.2/24"]),
            ("tA-fre", ["172.24.0.1/24", "172.24.0.10/32", "172.24.0.20/32"]),
            ("tA-fri", ["10.0.0.1/24"]),
        ):
            for addr in addrs:
                sh(*r, "addr", "add", addr, "dev", dev)
            sh(*r, "link", "set", dev, "up")
        in_ns(ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", OUTSIDE, "addr", "add", "172.24.0.254/24", "dev", "tA-foe")
        sh("ip", "-n", OUTSIDE, "link", "set", "tA-foe", "up")
        for n, host in ((1, HOST1), (2, HOST2)):
            sh("ip", "-n", host, "addr", "add", f"10.0.0.{4 + n}/24", "dev", f"tA-fh{n}i")
            sh("ip", "-n", host, "link", "set", f"tA-fh{n}i", "up")
            sh("ip", "-n", host, "route", "add", "default", "via", "10.0.0.1")
        for ns in (OUTSIDE, HOST1, HOST2):
            server = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(scripts / "server.py"), str(PORT)],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield scripts
    finally:
        for server in servers:
            server.kill()
            server.wait()
        cleanup()


def document(**changes: Any) -> ApplianceConfig:
    doc: dict[str, Any] = {
        "generation": 1,
        "router_id": "r1",
        "hostname": "r1",
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
                "addresses": ["172.24.0.1/24"],
                "subnets": [{"id": "es", "cidr": "172.24.0.0/24"}],
            },
            {
                "id": "i",
                "kind": "internal",
                "interface_mac": INT_MAC,
                "addresses": ["10.0.0.1/24"],
                "subnets": [{"id": "is", "cidr": "10.0.0.0/24"}],
            },
        ],
        "floating_ips": [{"floating_ip": "172.24.0.10", "fixed_ip": "10.0.0.5"}],
        "port_forwards": [
            {
                "id": "pf",
                "external_ip": "172.24.0.20",
                "protocol": "tcp",
                "external_port": {"first": 2222, "last": 2222},
                "internal_ip": "10.0.0.6",
                "internal_port": {"first": PORT, "last": PORT},
            }
        ],
    }
    doc.update(changes)
    return ApplianceConfig.model_validate(doc)


def greeting(bed: Path, ns: str, host: str, port: int = PORT) -> str | None:
    """'<source seen by the server> <server's address>', or None when no connection."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(bed / "client.py"), host, str(port), "0.5"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture
def firewall() -> Iterator[NftablesSubsystem]:
    subsystem = NftablesSubsystem(NftCli(("ip", "netns", "exec", ROUTER, "nft")))
    yield subsystem
    subsystem.apply(None, None, LINKS)


def test_nat_paths(bed: Path, firewall: NftablesSubsystem) -> None:
    firewall.apply(document(), None, LINKS)
    # Router-wide SNAT for a host without a floating IP, the floating IP for one with it.
    assert greeting(bed, HOST2, "172.24.0.254") == "172.24.0.1 172.24.0.254"
    assert greeting(bed, HOST1, "172.24.0.254") == "172.24.0.10 172.24.0.254"
    assert greeting(bed, OUTSIDE, "172.24.0.10") == "172.24.0.254 10.0.0.5"
    assert greeting(bed, OUTSIDE, "172.24.0.20", 2222) == "172.24.0.254 10.0.0.6"
    # Hairpin: host2 reaches host1 by its floating IP on the same subnet.
    assert greeting(bed, HOST2, "172.24.0.10") == "172.24.0.1 10.0.0.5"
    counters = {c.comment: c.packets for c in firewall.read_counters()}
    assert counters["fip-dnat"] >= 2 and counters["pf-tcp"] == 1 and counters["snat"] == 1


def test_firewall_first_match_decides(bed: Path, firewall: NftablesSubsystem) -> None:
    to_host1 = {"destination_cidr": "10.0.0.5/32", "protocol": "tcp"}
    deny_first = {
        "rules": [
            {"id": "no", "action": "reject", "direction": "ingress", **to_host1},
            {"id": "yes", "action": "allow", "destination_cidr": "10.0.0.0/24"},
            {"id": "yes2", "action": "allow", "destination_cidr": "10.0.1.0/24"},
        ],
        "default_action": "deny",
    }
    firewall.apply(document(firewall=deny_first), None, LINKS)
    assert greeting(bed, OUTSIDE, "172.24.0.10") is None
    assert greeting(bed, OUTSIDE, "172.24.0.20", 2222) == "172.24.0.254 10.0.0.6"
    counters = {c.comment: c.packets for c in firewall.read_counters()}
    assert counters["no"] >= 1 and counters["yes"] >= 1  # "yes" is an element of a set
    allow_first = {"rules": [*deny_first["rules"][1:], deny_first["rules"][0]]}
    firewall.apply(document(firewall=allow_first), None, LINKS)
    assert greeting(bed, OUTSIDE, "172.24.0.10") == "172.24.0.254 10.0.0.5"
    counters = {c.comment: c.packets for c in firewall.read_counters()}
    assert counters["yes"] >= 1


def test_connection_survives_full_apply_delta_and_failed_apply(
    bed: Path, firewall: NftablesSubsystem
) -> None:
    first = document()
    firewall.apply(first, None, LINKS)
    client = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            OUTSIDE,
            sys.executable,
            str(bed / "client.py"),
            "172.24.0.10",
            str(PORT),
            "2",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def echo(word: str) -> str:
        client.stdin.write(word + "\n")  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
        return client.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert client.stdout.readline().strip() == "172.24.0.254 10.0.0.5"
        full = document(generation=2, snat_enabled=False)
        firewall.apply(full, first, LINKS)
        assert echo("after-full") == "after-full"
        fips = [*full.floating_ips, {"floating_ip": "172.24.0.11", "fixed_ip": "10.0.0.6"}]
        delta = document(generation=3, snat_enabled=False, floating_ips=fips)
        firewall.apply(delta, full, LINKS)
        assert echo("after-delta") == "after-delta"
        assert "172.24.0.11 : 10.0.0.6" in in_ns(
            ROUTER, "nft", "list", "map", "ip", "astara_nat", "fip_dnat"
        )

        broken = NftablesSubsystem(BrokenCli(("ip", "netns", "exec", ROUTER, "nft")))
        with pytest.raises(ApplyStepError) as failure:
            broken.apply(document(generation=4, floating_ips=[]), None, LINKS)
        assert failure.value.step == "firewall" and "Error" in failure.value.detail
        assert echo("after-failure") == "after-failure"
        assert greeting(bed, OUTSIDE, "172.24.0.10") == "172.24.0.254 10.0.0.5"
        assert "172.24.0.11" in in_ns(ROUTER, "nft", "list", "map", "ip", "astara_nat", "fip_dnat")
    finally:
        client.kill()
        client.wait()


class BrokenCli(NftCli):
    """Appends a line nft rejects, so the whole transaction must fail."""

    def run(self, script: str) -> None:
        super().run(script + "add rule inet astara_filter forward ip saddr 10.0.0.0/33 drop\n")


def test_removal_leaves_other_tables(bed: Path, firewall: NftablesSubsystem) -> None:
    in_ns(ROUTER, "nft", "add", "table", "inet", "someone_else")
    firewall.apply(document(), None, LINKS)
    firewall.apply(None, document(), LINKS)
    tables = in_ns(ROUTER, "nft", "list", "tables")
    assert "someone_else" in tables and "astara" not in tables
    in_ns(ROUTER, "nft", "delete", "table", "inet", "someone_else")


def test_large_rendered_ruleset_is_valid_nft(bed: Path) -> None:
    rules = []
    for i in range(600):
        action = ("allow", "deny", "reject")[i // 50 % 3]
        rules.append(
            {
                "id": f"r{i}",
                "action": action,
                "protocol": "tcp",
                "source_cidr": f"10.{i % 7}.{i % 5}.0/{24 + i % 3 * 4}",
                "destination_ports": {"first": 20 + i % 11, "last": 20 + i % 11 + i % 3},
            }
        )
    text = render_ruleset(document(firewall={"rules": rules}), LINKS)
    done = subprocess.run(
        ["ip", "netns", "exec", ROUTER, "nft", "-c", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def in_router(script: str, first: ApplianceConfig, second: ApplianceConfig) -> dict[str, Any]:
    """Run ``script`` in the router namespace with the link map and two documents on stdin;
    its JSON answer."""
    done = subprocess.run(
        ["ip", "netns", "exec", ROUTER, sys.executable, "-c", script],
        input=json.dumps([LINKS, first.model_dump(mode="json"), second.model_dump(mode="json")]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def drop_tables() -> None:
    subprocess.run(
        ["ip", "netns", "exec", ROUTER, "nft", "-f", "-"],
        input="table inet astara_filter\ndelete table inet astara_filter\n"
        "table ip astara_nat\ndelete table ip astara_nat\n",
        text=True,
        check=True,
    )


# Run inside the router namespace: the default runner is libnftables in-process.
IN_NAMESPACE = textwrap.dedent(
    """
    import json, sys
    from astara.wire.document import ApplianceConfig
    from astara.appliance.nft_runner import LibNftables
    from astara.appliance.nftables import NftablesSubsystem
    from astara.appliance.subsystem import ApplyStepError
    links, first, second = json.load(sys.stdin)
    first, second = (ApplianceConfig.model_validate(d) for d in (first, second))
    subsystem = NftablesSubsystem()
    assert isinstance(subsystem.runner, LibNftables)
    subsystem.apply(first, None, links)
    subsystem.apply(second, first, links)
    try:
        subsystem.runner.run("add rule inet astara_filter forward ip saddr 10.0.0.0/33 drop")
    except ApplyStepError as exc:
        error = exc.detail
    counters = [c.comment for c in subsystem.read_counters()]
    print(json.dumps({"error": error, "counters": counters}))
    """
)


def test_libnftables_runner_in_the_namespace(bed: Path) -> None:
    first = document()
    fips = [*first.floating_ips, {"floating_ip": "172.24.0.12", "fixed_ip": "10.0.0.6"}]
    second = document(generation=2, floating_ips=fips)
    try:
        result = in_router(IN_NAMESPACE, first, second)
        assert "Prefix length 33 is invalid" in result["error"]
        assert {"fip-dnat", "snat", "api"} <= set(result["counters"])
        assert greeting(bed, OUTSIDE, "172.24.0.10") == "172.24.0.254 10.0.0.5"
        listed = in_ns(ROUTER, "nft", "list", "map", "ip", "astara_nat", "fip_dnat")
        assert "172.24.0.12 : 10.0.0.6" in listed
    finally:
        drop_tables()


# Run inside the router namespace: NAT element changes over netlink, as the appliance sends
# them; the NAT table's contents after the delta must be those of a full replace.
NETLINK_DELTA = textwrap.dedent(
    """
    import json, sys
    from astara.wire.document import ApplianceConfig
    from astara.appliance.nat_netlink import NetlinkElements
    from astara.appliance.nftables import NAT_TABLE, NftablesSubsystem, SetChange
    from astara.appliance.subsystem import ApplyStepError
    links, first, second = json.load(sys.stdin)
    first, second = (ApplianceConfig.model_validate(d) for d in (first, second))
    subsystem = NftablesSubsystem(elements=NetlinkElements())

    def contents():
        listing = subsystem.runner.list_json("table " + NAT_TABLE)["nftables"]
        found = {}
        for item in listing:
            for kind in ("map", "set"):
                if kind in item:
                    found[item[kind]["name"]] = sorted(map(repr, item[kind].get("elem", [])))
        return found

    subsystem.apply(first, None, links)
    written = subsystem.versions()
    subsystem.apply(second, first, links)
    moved = {t: subsystem.versions()[t] - written[t] for t in written}
    after_delta = contents()
    subsystem.apply(second, None, links)
    after_full = contents()
    refused = [
        SetChange(True, "fip_dnat", ("172.24.0.99",), ("10.0.0.9",)),
        SetChange(False, "fip_snat", ("10.9.9.9",)),
    ]
    try:
        subsystem.elements.write(refused)
        error = None
    except ApplyStepError as exc:
        error = exc.detail
    print(json.dumps({"moved": moved, "delta": after_delta, "full": after_full,
                      "error": error, "after_error": contents()}))
    """
)


def test_netlink_element_changes_leave_what_a_full_replace_would(bed: Path) -> None:
    def forward(
        pf_id: str, protocol: str, ext: tuple[int, int], ip: str, internal: tuple[int, int]
    ) -> dict[str, Any]:
        return {
            "id": pf_id,
            "external_ip": "172.24.0.20",
            "protocol": protocol,
            "external_port": {"first": ext[0], "last": ext[1]},
            "internal_ip": ip,
            "internal_port": {"first": internal[0], "last": internal[1]},
        }

    first = document()
    second = document(
        generation=2,
        # A changed value (delete and add), a new floating IP, and every port-forward shape.
        floating_ips=[
            {"floating_ip": "172.24.0.10", "fixed_ip": "10.0.0.6"},
            {"floating_ip": "172.24.0.11", "fixed_ip": "10.0.0.5"},
        ],
        port_forwards=[
            forward("keep", "tcp", (PORT, PORT + 1), "10.0.0.5", (PORT, PORT + 1)),
            forward("one", "tcp", (2223, 2223), "10.0.0.6", (PORT, PORT)),
            forward("shift", "udp", (3000, 3002), "10.0.0.6", (4000, 4002)),
        ],
    )
    try:
        result = in_router(NETLINK_DELTA, first, second)
        assert result["moved"] == {"inet astara_filter": 0, "ip astara_nat": 1}
        assert result["delta"] == result["full"]
        assert any("4002" in elem for elem in result["delta"]["pf_udp"])
        assert "cannot delete from ip astara_nat fip_snat (10.9.9.9)" in result["error"]
        # One transaction: the add beside the refused delete did not happen either.
        assert result["after_error"] == result["full"]
        assert greeting(bed, OUTSIDE, "172.24.0.10") == "172.24.0.254 10.0.0.6"
        assert greeting(bed, OUTSIDE, "172.24.0.20", PORT + 1) is None  # nobody listens there
        assert greeting(bed, OUTSIDE, "172.24.0.20") == "172.24.0.254 10.0.0.5"
        assert greeting(bed, OUTSIDE, "172.24.0.20", 2223) == "172.24.0.254 10.0.0.6"
    finally:
        drop_tables()


def test_the_record_after_a_floating_ip_delta_lists_the_nat_table_only(
    bed: Path, firewall: NftablesSubsystem, tmp_path: Path
) -> None:
    listed: list[str] = []

    def list_json(what: str = "ruleset") -> dict[str, Any]:
        listed.append(what)
        return firewall.runner.list_json(what)

    # Links are left out: the namespace's addresses are not what this test is about.
    probe = KernelLiveState(list_json, TABLES, tmp_path, firewall.versions)
    first = document()
    firewall.apply(first, None, LINKS)
    base = probe.read({})
    fips = [*first.floating_ips, {"floating_ip": "172.24.0.12", "fixed_ip": "10.0.0.6"}]
    firewall.apply(document(generation=2, floating_ips=fips), first, LINKS)
    listed.clear()
    after = probe.read({}, base)
    assert listed == ["table ip astara_nat"]
    # What the record kept equals what reading everything finds, and differs from before.
    assert after == probe.read({}) != base
    # A change behind our back to the table the record did not list is still seen.
    in_ns(ROUTER, "nft", "flush", "chain", "inet", "astara_filter", "forward")
    assert probe.read({}) != after


# Applies a document over another through the conntrack subsystem, in the router namespace.
CUT_IN_NAMESPACE = textwrap.dedent(
    """
    import json, sys
    from astara.appliance.conntrack import ConntrackSubsystem
    from astara.wire.document import ApplianceConfig
    desired, previous = (ApplianceConfig.model_validate(d) for d in json.load(sys.stdin))
    ConntrackSubsystem().apply(desired, previous, {})
    """
)


def test_a_moved_floating_ip_ends_the_connections_it_carried(
    bed: Path, firewall: NftablesSubsystem
) -> None:
    first = document()
    moved = document(
        generation=2, floating_ips=[{"floating_ip": "172.24.0.10", "fixed_ip": "10.0.0.6"}]
    )
    firewall.apply(first, None, LINKS)
    connect = [sys.executable, str(bed / "client.py"), "172.24.0.10", str(PORT), "2"]
    client = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE, *connect],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        assert client.stdout.readline().strip() == "172.24.0.254 10.0.0.5"
        client.stdin.write("before\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "before"
        firewall.apply(moved, first, LINKS)
        subprocess.run(
            ["ip", "netns", "exec", ROUTER, sys.executable, "-c", CUT_IN_NAMESPACE],
            input=json.dumps([moved.model_dump(mode="json"), first.model_dump(mode="json")]),
            text=True,
            check=True,
        )
        client.stdin.write("after\n")
        client.stdin.flush()
        # The next segment is judged afresh, sent to the new fixed IP, which knows no such
        # connection: reset (a kept conntrack entry would have echoed "after" from 10.0.0.5).
        assert client.stdout.readline().strip() != "after"
        assert client.wait(10) != 0
    finally:
        client.kill()
        client.wait()
    assert greeting(bed, OUTSIDE, "172.24.0.10") == "172.24.0.254 10.0.0.6"
