"""The netns provider for real: namespaces, veths, bridges and a live appliance over mutual TLS."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from astara.common.tls import CertificateAuthority
from astara.orchestrator.appliance_client import (
    ApplianceClient,
    InvalidConfig,
    StaleGeneration,
    Unreachable,
)
from astara.providers.base import Instance, InstanceSpec, PortSpec, load_provider
from astara.providers.netns import NETNS_DIR, NetnsProvider, host_management_address
from astara.wire.document import ApplianceConfig, config_digest
from astara.wire.heartbeat import BadSignature, Heartbeat, decode

pytestmark = pytest.mark.functional

PREFIX = "tE"
WORKLOAD_NS = "tE-work"
EXTERNAL_NET = "net-external"
INTERNAL_NET = "net-internal"
MGMT = PortSpec(
    port_id="port-mgmt", network_id="net-mgmt", mac="02:e0:00:00:00:01", kind="management"
)
EXTERNAL = PortSpec(
    port_id="port-ext", network_id=EXTERNAL_NET, mac="02:e0:00:00:00:02", kind="external"
)
INTERNAL = PortSpec(
    port_id="port-int", network_id=INTERNAL_NET, mac="02:e0:00:00:00:03", kind="internal", mtu=1450
)
EXTRA = PortSpec(
    port_id="port-extra", network_id="net-extra", mac="02:e0:00:00:00:04", kind="internal"
)
SPEC = InstanceSpec(instance_id="inst-1", router_id="router-1", ports=(MGMT, EXTERNAL, INTERNAL))


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


def leftovers(state_dir: Path, prefix: str = PREFIX) -> list[str]:
    """Everything with our prefix: namespaces, host links, processes in them, state files."""
    found = [name for name in sh("ip", "netns", "list").split() if name.startswith(prefix)]
    found += [
        line.split(":")[1].strip().split("@")[0]
        for line in sh("ip", "-o", "link", "show").splitlines()
        if line.split(":")[1].strip().startswith(prefix)
    ]
    found += [str(path) for path in state_dir.glob(f"{prefix}*")]
    found += [
        line
        for line in sh("ps", "-eo", "pid,stat,args").splitlines()
        if str(state_dir) in line and " Z" not in line
    ]
    return found


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def client_files(tmp_path: Path, ca: CertificateAuthority) -> dict[str, Path]:
    files = {
        "ca": tmp_path / "ca" / "ca.pem",
        "cert": tmp_path / "c.pem",
        "key": tmp_path / "c.key",
    }
    ca.issue("orchestrator", "client").write(files["cert"], files["key"])
    return files


@pytest.fixture
def provider(tmp_path: Path, ca: CertificateAuthority) -> Iterator[NetnsProvider]:
    provider = load_provider("netns", state_dir=tmp_path / "state", ca=ca, prefix=PREFIX)
    assert isinstance(provider, NetnsProvider)
    try:
        yield provider
    finally:
        if (NETNS_DIR / WORKLOAD_NS).exists():
            sh("ip", "netns", "del", WORKLOAD_NS)
        provider.teardown()


def client(instance: Instance, files: dict[str, Path], timeout: float = 2.0) -> ApplianceClient:
    return ApplianceClient(instance.management_address, **files, timeout=timeout)


def wait_healthy(api: ApplianceClient, deadline_s: float = 20.0) -> float:
    started = time.monotonic()
    while True:
        try:
            api.health()
            return time.monotonic() - started
        except Unreachable:
            if time.monotonic() - started > deadline_s:
                raise
            time.sleep(0.1)


def config(instance: Instance, generation: int, ports: tuple[PortSpec, ...]) -> ApplianceConfig:
    subnets = {INTERNAL.port_id: "10.71.0", EXTRA.port_id: "10.72.0"}
    networks = [
        {
            "id": MGMT.network_id,
            "kind": "management",
            "interface_mac": MGMT.mac,
            "addresses": [f"{instance.management_address}/64"],
        },
        {
            "id": EXTERNAL_NET,
            "kind": "external",
            "interface_mac": EXTERNAL.mac,
            "addresses": ["192.0.2.10/24"],
            "subnets": [{"id": "sub-ext", "cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.1"}],
        },
    ]
    for port in ports:
        if port.kind == "internal":
            net = subnets[port.port_id]
            networks.append(
                {
                    "id": port.network_id,
                    "kind": "internal",
                    "interface_mac": port.mac,
                    "addresses": [f"{net}.1/24"],
                    "subnets": [
                        {"id": f"sub-{port.port_id}", "cidr": f"{net}.0/24", "dhcp_enabled": False}
                    ],
                }
            )
    return ApplianceConfig.model_validate(
        {
            "generation": generation,
            "router_id": instance.router_id,
            "hostname": "router-1",
            "interfaces": [{"mac": p.mac, "mtu": p.mtu} for p in ports],
            "networks": networks,
        }
    )


def start_workload(provider: NetnsProvider, network_id: str, address: str, gateway: str) -> None:
    """A namespace with one veth on the network's bridge: a VM stand-in."""
    fabric, bridge = provider.names.fabric_ns, provider.ensure_network_bridge(network_id)
    sh("ip", "netns", "add", WORKLOAD_NS)
    sh("ip", "-n", fabric, "link", "add", "tEwf", "type", "veth", "peer", "name", "tEwi",
       "netns", WORKLOAD_NS)  # fmt: skip
    sh("ip", "-n", fabric, "link", "set", "tEwf", "master", bridge, "up")
    sh("ip", "-n", WORKLOAD_NS, "addr", "add", address, "dev", "tEwi")
    sh("ip", "-n", WORKLOAD_NS, "link", "set", "tEwi", "up")
    sh("ip", "-n", WORKLOAD_NS, "route", "add", "default", "via", gateway)


def ping(ns: str, target: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", target],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def ping_within(ns: str, target: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ping(ns, target):
            return True
    return False


def instance_links(instance: Instance, provider: NetnsProvider) -> dict[str, dict[str, object]]:
    """MAC -> link of the instance's namespace."""
    links = provider.ip.links(provider.names.instance_ns(instance.id))
    return {str(link["address"]): link for link in links if link["ifname"] != "lo"}


def test_boot_configure_route_replug_readopt_delete(
    provider: NetnsProvider, client_files: dict[str, Path], tmp_path: Path
) -> None:
    uplink = provider.ensure_uplink(EXTERNAL_NET, "192.0.2.1/24")
    started = time.monotonic()
    instance = provider.boot(SPEC)
    boot_s = time.monotonic() - started
    assert instance.state == "running"
    assert ipaddress.ip_address(instance.management_address) in ipaddress.ip_network(
        "fdca:3ba5:a17a:acda::/64"
    )
    assert provider.boot(SPEC) == instance, "booting an existing instance returns it"

    links = instance_links(instance, provider)
    assert set(links) == {MGMT.mac, EXTERNAL.mac, INTERNAL.mac}
    assert links[INTERNAL.mac]["mtu"] == 1450

    with client(instance, client_files) as api:
        ready_s = wait_healthy(api)
        assert api.get_config() is None
        health = api.put_config(config(instance, 1, SPEC.ports))
        assert health.generation == 1
        assert health.last_result == "applied"
        applied = api.get_config()
        assert applied is not None and applied.generation == 1

        # The router's data plane is live: a workload on the internal bridge reaches it,
        # and through it the outside world (the uplink namespace).
        start_workload(provider, INTERNAL_NET, "10.71.0.5/24", "10.71.0.1")
        assert ping_within(WORKLOAD_NS, "10.71.0.1")
        assert ping_within(WORKLOAD_NS, "192.0.2.1")
        assert ping(uplink.namespace, "192.0.2.10")

        with pytest.raises(StaleGeneration) as stale:
            api.put_config(config(instance, 1, SPEC.ports).model_copy(update={"hostname": "x"}))
        assert stale.value.applied_generation == 1
        bad = config(instance, 2, SPEC.ports).model_dump(mode="json")
        bad["networks"][1]["interface_mac"] = "02:e0:00:00:00:99"
        with pytest.raises(InvalidConfig) as invalid:
            api.put_config(ApplianceConfig.model_validate(bad))
        assert invalid.value.problems[0].loc == ("networks", 1, "interface_mac")

        # Plug a second internal network, then take it away again.
        plugged = provider.plug(instance, EXTRA)
        assert EXTRA in plugged.ports
        assert provider.plug(instance, EXTRA) == plugged
        assert EXTRA.mac in instance_links(instance, provider)
        assert provider.ip.link_exists(provider.names.network_bridge("net-extra"), "tE-fabric")
        api.put_config(config(instance, 2, (*SPEC.ports, EXTRA)))
        unplugged = provider.unplug(instance, EXTRA.port_id)
        assert EXTRA not in unplugged.ports
        assert provider.unplug(instance, EXTRA.port_id) == unplugged
        assert EXTRA.mac not in instance_links(instance, provider)
        assert not provider.ip.link_exists(provider.names.network_bridge("net-extra"), "tE-fabric")
        api.put_config(config(instance, 3, SPEC.ports))
        assert ping(WORKLOAD_NS, "10.71.0.1")

    # A fresh provider (an orchestrator restart) finds the instance as it is.
    again = NetnsProvider(tmp_path / "state", provider.ca, prefix=PREFIX)
    assert again.list() == [unplugged]
    assert again.get("inst-1") == unplugged
    assert again.get("inst-nope") is None

    instance_dir = tmp_path / "state" / provider.names.instance_ns("inst-1")
    appliance_pid = int((instance_dir / "appliance.pid").read_text())
    started = time.monotonic()
    again.delete("inst-1")
    delete_s = time.monotonic() - started
    again.delete("inst-1")
    assert not Path(f"/proc/{appliance_pid}").exists(), "the appliance is stopped and reaped"
    assert again.list() == []
    assert not (NETNS_DIR / provider.names.instance_ns("inst-1")).exists()
    fabric_links = [link["ifname"] for link in provider.ip.links("tE-fabric")]
    assert provider.names.port_fabric_link(INTERNAL.port_id) not in fabric_links
    with pytest.raises(Unreachable), client(instance, client_files, timeout=0.5) as api:
        api.health()

    sh("ip", "netns", "del", WORKLOAD_NS)
    provider.teardown()
    assert leftovers(tmp_path / "state") == []
    print(f"boot {boot_s:.3f} s, API ready {ready_s:.3f} s after boot, delete {delete_s:.3f} s")


def test_missing_and_stopped_states(provider: NetnsProvider) -> None:
    instance = provider.boot(SPEC.model_copy(update={"instance_id": "inst-2"}))
    provider.processes.stop_namespace(provider.names.instance_ns("inst-2"))
    assert provider.get("inst-2") == instance.model_copy(update={"state": "stopped"})
    sh("ip", "netns", "del", provider.names.instance_ns("inst-2"))
    assert provider.get("inst-2") == instance.model_copy(update={"state": "missing"})
    # Booting again repairs it, on the same management address.
    repaired = provider.boot(SPEC.model_copy(update={"instance_id": "inst-2"}))
    assert repaired == instance


def test_parallel_boots_get_distinct_addresses(provider: NetnsProvider) -> None:
    def spec(n: int) -> InstanceSpec:
        ports = tuple(
            port.model_copy(
                update={"port_id": f"{port.port_id}-{n}", "mac": f"{port.mac[:-2]}{n + 16:02x}"}
            )
            for port in (MGMT, INTERNAL)
        )
        return InstanceSpec(instance_id=f"inst-p{n}", router_id=f"router-{n}", ports=ports)

    with ThreadPoolExecutor(max_workers=4) as pool:
        booted = list(pool.map(provider.boot, [spec(n) for n in range(4)]))
    assert len({instance.management_address for instance in booted}) == 4
    assert sorted(i.id for i in provider.list()) == [f"inst-p{n}" for n in range(4)]
    # Four ports on one internal network share its bridge; it goes with the last of them.
    bridge = provider.names.network_bridge(INTERNAL_NET)
    for instance in booted:
        assert provider.ip.link_exists(bridge, provider.names.fabric_ns)
        provider.delete(instance.id)
    assert not provider.ip.link_exists(bridge, provider.names.fabric_ns)
    assert provider.list() == []


# Breaking an appliance and deleting it: the provider must clean up whatever state it is in.
BROKEN_PREFIX = "tJ"
BROKEN_SUBNET = "fdca:3ba5:a17a:4a::/64"  # not the default: other test beds may hold that one
BROKEN_SPEC = InstanceSpec(
    instance_id="inst-broken",
    router_id="router-broken",
    ports=(
        MGMT.model_copy(update={"mac": "02:4a:00:00:00:01"}),
        INTERNAL.model_copy(update={"mac": "02:4a:00:00:00:03"}),
    ),
)


@pytest.fixture
def breakable(tmp_path: Path, ca: CertificateAuthority) -> Iterator[NetnsProvider]:
    provider = NetnsProvider(
        tmp_path / "state", ca, prefix=BROKEN_PREFIX, management_subnet=BROKEN_SUBNET
    )
    try:
        yield provider
    finally:
        provider.teardown()


def appliance_pid(provider: NetnsProvider, instance_id: str) -> int:
    pid_file = provider.state_dir / provider.names.instance_ns(instance_id) / "appliance.pid"
    return int(pid_file.read_text())


def boot_healthy(provider: NetnsProvider, files: dict[str, Path]) -> Instance:
    instance = provider.boot(BROKEN_SPEC)
    with client(instance, files) as api:
        wait_healthy(api)
    return instance


def assert_deleted_cleanly(provider: NetnsProvider, tmp_path: Path, pid: int) -> None:
    assert provider.list() == []
    assert not Path(f"/proc/{pid}").exists(), "the appliance is stopped and reaped"
    fabric_links = [link["ifname"] for link in provider.ip.links(provider.names.fabric_ns)]
    for port in BROKEN_SPEC.ports:
        assert provider.names.port_fabric_link(port.port_id) not in fabric_links
    provider.teardown()
    assert leftovers(tmp_path / "state", BROKEN_PREFIX) == []


def timed_delete(provider: NetnsProvider) -> float:
    started = time.monotonic()
    provider.delete(BROKEN_SPEC.instance_id)
    return time.monotonic() - started


def test_delete_a_frozen_appliance(
    breakable: NetnsProvider, client_files: dict[str, Path], tmp_path: Path
) -> None:
    boot_healthy(breakable, client_files)
    pid = appliance_pid(breakable, BROKEN_SPEC.instance_id)
    sh("kill", "-STOP", str(pid))
    assert timed_delete(breakable) < 2.0, "a frozen appliance is woken to die, not waited for"
    assert_deleted_cleanly(breakable, tmp_path, pid)


def test_delete_after_the_namespace_was_deleted_behind_its_back(
    breakable: NetnsProvider, client_files: dict[str, Path], tmp_path: Path
) -> None:
    boot_healthy(breakable, client_files)
    pid = appliance_pid(breakable, BROKEN_SPEC.instance_id)
    sh("ip", "netns", "del", breakable.names.instance_ns(BROKEN_SPEC.instance_id))
    assert breakable.get(BROKEN_SPEC.instance_id).state == "missing"  # type: ignore[union-attr]
    # A provider that did not start it (the orchestrator restarted) must still find it.
    NetnsProvider(
        breakable.state_dir, breakable.ca, prefix=BROKEN_PREFIX, management_subnet=BROKEN_SUBNET
    ).delete(BROKEN_SPEC.instance_id)
    assert_deleted_cleanly(breakable, tmp_path, pid)


def test_delete_after_the_management_link_was_cut(
    breakable: NetnsProvider, client_files: dict[str, Path], tmp_path: Path
) -> None:
    boot_healthy(breakable, client_files)
    pid = appliance_pid(breakable, BROKEN_SPEC.instance_id)
    management = breakable.names.port_fabric_link(BROKEN_SPEC.management_port().port_id)
    sh("ip", "-n", breakable.names.fabric_ns, "link", "del", management)
    timed_delete(breakable)
    assert_deleted_cleanly(breakable, tmp_path, pid)


def test_teardown_after_every_namespace_was_deleted_behind_its_back(
    breakable: NetnsProvider, client_files: dict[str, Path], tmp_path: Path
) -> None:
    """What a host's cleanup (or a reboot) leaves: records, no namespaces, not even the
    fabric. The next run's teardown must still clear the records, not fail on the fabric."""
    boot_healthy(breakable, client_files)
    pid = appliance_pid(breakable, BROKEN_SPEC.instance_id)
    sh("kill", "-9", str(pid))
    for ns in (breakable.names.instance_ns(BROKEN_SPEC.instance_id), breakable.names.fabric_ns):
        sh("ip", "netns", "del", ns)
    NetnsProvider(
        breakable.state_dir, breakable.ca, prefix=BROKEN_PREFIX, management_subnet=BROKEN_SUBNET
    ).teardown()
    assert breakable.list() == []
    assert leftovers(tmp_path / "state", BROKEN_PREFIX) == []


def next_beat(sock: socket.socket, key: bytes, instance_id: str, seconds: float) -> Heartbeat:
    sock.settimeout(seconds)
    datagram, _ = sock.recvfrom(4096)
    return decode(
        datagram, {instance_id: key}.get, now=time.time(), max_skew=30, last_sequence=lambda _: None
    )


def test_heartbeats_drift_and_reapply(
    tmp_path: Path, ca: CertificateAuthority, client_files: dict[str, Path]
) -> None:
    key = os.urandom(32)
    spec = SPEC.model_copy(update={"instance_id": "inst-hb"})
    host = str(host_management_address(ipaddress.ip_network(BROKEN_SUBNET)).ip)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::", 0))
        provider = NetnsProvider(
            tmp_path / "state",
            ca,
            prefix=BROKEN_PREFIX,
            management_subnet=BROKEN_SUBNET,
            heartbeat_target=(host, sock.getsockname()[1]),
            heartbeat_key={spec.instance_id: key}.__getitem__,
        )
        try:
            instance = provider.boot(spec)
            namespace = provider.names.instance_ns(spec.instance_id)
            key_file = provider.state_dir / namespace / "heartbeat.key"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

            # Signed with the instance's key, nothing applied yet.
            beat = next_beat(sock, key, spec.instance_id, seconds=20)
            assert (beat.instance_id, beat.generation, beat.digest) == (spec.instance_id, None, "")
            sock.settimeout(5)
            with pytest.raises(BadSignature):
                decode(sock.recv(4096), lambda _: bytes(32), time.time(), 30, lambda _: None)

            document = config(instance, 1, spec.ports)
            with client(instance, client_files) as api:
                wait_healthy(api)
                assert api.health().drift is None
                assert api.put_config(document).drift is False
                # The digest is recorded just after the answer; heartbeats carry it from then.
                deadline = time.monotonic() + 5
                while (beat.generation, beat.digest) != (1, config_digest(document)):
                    assert time.monotonic() < deadline, "no heartbeat reports generation 1"
                    beat = next_beat(sock, key, spec.instance_id, seconds=5)
                assert api.health().config_digest == config_digest(document)

                started = time.monotonic()
                assert api.health().drift is False
                check_s = time.monotonic() - started
                internal = provider.names.port_instance_link(INTERNAL.port_id)
                # Flushing the filter table would also cut the API off (input policy drop):
                # that is a dead appliance, not drift.
                for breakage in (
                    ["nft", "flush", "table", "ip", "astara_nat"],
                    ["ip", "addr", "del", "10.71.0.1/24", "dev", internal],
                    ["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
                ):
                    sh("ip", "netns", "exec", namespace, *breakage)
                    assert api.health().drift is True, breakage
                    repaired = api.reapply()
                    assert (repaired.drift, repaired.generation) == (False, 1)
                    deadline = time.monotonic() + 5  # the new fingerprint is recorded just after
                    while (drift := api.health().drift) is None:
                        assert time.monotonic() < deadline, "the reapply was never recorded"
                        time.sleep(0.01)
                    assert drift is False
                rules = sh("ip", "netns", "exec", namespace, "nft", "list", "table", "ip",
                           "astara_nat")  # fmt: skip
                assert "masquerade" in rules or "snat" in rules
                assert "10.71.0.1/24" in sh("ip", "-n", namespace, "addr", "show", internal)
            print(f"drift check over the API: {check_s * 1000:.1f} ms")
        finally:
            provider.teardown()
    assert leftovers(tmp_path / "state", BROKEN_PREFIX) == []
