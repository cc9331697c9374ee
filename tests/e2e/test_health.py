"""Chaos: appliances killed, frozen, unplugged or removed are detected and replaced for real.

The real cloud-in-a-box (Neutron with Astara's plugin, RabbitMQ, astara-orchestrator, netns
appliances). A workload behind the router pings the outside world through SNAT; after each
failure, detection and replacement must bring that traffic back within BOUND seconds (a
generous bound: the real target, an outage of at most 6 s, is what bench/failure.py measures).
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from astara.orchestrator.appliance_client import ApplianceClient
from astara.orchestrator.health_loop import BREAKER_FILE, HeartbeatKeys
from astara.providers.base import Instance
from astara.testing import services
from astara.testing.chaos import (
    FAILURES,
    RouterBed,
    build_router_bed,
    eventually,
    fresh_state,
    instance_namespaces,
    kill_appliance,
    starve_appliance,
)
from astara.testing.cloud import CloudInABox
from astara.testing.mariadb import create_database, drop_database
from astara.testing.netns import Namespace
from astara.testing.neutron_bed import NeutronTestbed
from astara.wire.heartbeat import Heartbeat, encode

pytestmark = pytest.mark.e2e

PREFIX = "ath"
STATE = Path("/var/lib/astara/e2e-health")
METRICS_PORT = 19311
BOUND = 45.0
MARIADBD = "/usr/sbin/mariadbd"


@pytest.fixture(scope="module")
def bed() -> Iterator[RouterBed]:
    neutron = NeutronTestbed(
        state_dir=STATE / "neutron", database="astara_neutron_health", astara_plugin=True
    )
    # The orchestrator's store on MariaDB here (SQLite elsewhere): the outage test stops it.
    store_url = create_database("astara_orch_health", "astara_orch_health", secrets.token_hex(8))
    cloud = CloudInABox(
        state_dir=STATE,
        bed=neutron,
        prefix=PREFIX,
        metrics_port=METRICS_PORT,
        database_url=store_url,
        # One router failing over and over is what this module does on purpose.
        health={"breaker_min_deaths": "1000"},
    )
    fresh_state(cloud)
    endpoint = cloud.up()
    try:
        yield build_router_bed(cloud, endpoint.url, 30)
    finally:
        cloud.down()
        drop_database("astara_orch_health", "astara_orch_health")


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_failure_is_detected_and_the_router_replaced(bed: RouterBed, kind: str) -> None:
    eventually(bed.pings_out, 30, "traffic before the failure")
    old = bed.instance()
    FAILURES[kind](bed, old)
    eventually(lambda: bed.replaced(old), BOUND, f"replacement after {kind}")
    assert not (STATE / "orchestrator" / BREAKER_FILE).exists()


def test_an_appliance_starved_of_cpu_for_3_s_is_probed_and_kept(bed: RouterBed) -> None:
    eventually(bed.pings_out, 30, "traffic before the stall")
    old = bed.instance()
    # Watched (a replacement of the previous test is followed within a second or so).
    eventually(watched_and_alive, 15, "the appliance watched and beating")
    before = probes()
    starve_appliance(bed, old, 3.0)
    # The positive signal: the stall was long enough to be suspected (1.5 s of silence), and
    # the probe it called for was answered once the appliance had CPU again.
    eventually(lambda: probes()["answered"] > before["answered"], 10, "the probe answered")
    assert probes()["failed"] == before["failed"]
    eventually(bed.pings_out, 10, "traffic after the stall")
    assert [i.id for i in bed.instances()] == [old.id]


def watched_and_alive() -> bool:
    return counters("astara_instances", "health").get("alive") == 1.0


def probes() -> dict[str, float]:
    return counters("astara_health_probes_total", "result")


def test_orchestrator_killed_while_replacing_converges_to_one_instance(bed: RouterBed) -> None:
    old = bed.instance()
    kill_appliance(bed, old)
    # Let detection start the replacement, then crash the orchestrator in the middle of it.
    eventually(lambda: len(bed.instances()) == 2, BOUND, "a replacement booting")
    bed.cloud.kill_orchestrator(signal.SIGKILL)
    bed.cloud.start_orchestrator()
    eventually(lambda: bed.replaced(old), BOUND + 30, "convergence after the crash")
    assert len(instance_namespaces(PREFIX)) == 1


def test_forged_replayed_and_malformed_heartbeats_are_rejected_and_counted(
    bed: RouterBed,
) -> None:
    instance: Instance = bed.instance()
    target = ("fdca:3ba5:a17a:acda::1", 5555)
    key = HeartbeatKeys(STATE / "orchestrator").key_for(instance.id)
    attempt = iter(range(1, 1000))

    def rejected_and_counted() -> bool:
        # Retried until the receiver knows the instance (it follows the store once a second).
        before = rejected()
        beat = Heartbeat(instance.id, 10**18 + next(attempt), time.time(), 1, "x")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.sendto(encode(beat, b"not the key"), target)
            valid = encode(beat, key)
            sock.sendto(valid, target)
            sock.sendto(valid, target)  # the same sequence again: a replay
            sock.sendto(b"\x00garbage", target)
        time.sleep(0.5)
        after = rejected()
        return all(after[r] >= before[r] + 1 for r in ("bad_signature", "replay", "malformed"))

    eventually(rejected_and_counted, 20, "forged, replayed and malformed datagrams counted")


def rejected() -> dict[str, float]:
    return counters("astara_heartbeats_rejected_total", "reason")


def counters(name: str, label: str) -> dict[str, float]:
    """One labelled counter of the orchestrator's metrics, by its label's value."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            found[value] = float(line.rsplit(" ", 1)[1])
    return found


def test_orchestrator_killed_while_creating_and_deleting_leaves_one_then_nothing(
    bed: RouterBed,
) -> None:
    sdk, project = bed.sdk, "chaos"
    net = sdk.network.create_network(name="n2", project_id=project)
    sub = sdk.network.create_subnet(
        network_id=net.id, cidr="10.32.0.0/24", ip_version=4, project_id=project
    )
    router = sdk.network.create_router(name="r2", project_id=project)
    sdk.network.add_interface_to_router(router, subnet=sub.id)
    time.sleep(0.5)
    bed.cloud.kill_orchestrator(signal.SIGKILL)  # in the middle of booting or configuring
    bed.cloud.start_orchestrator()

    def configured_once() -> bool:
        mine = [i for i in bed.instances() if i.router_id == router.id]
        return len(mine) == 1 and mine[0].state == "running" and applied(bed, mine[0]) > 0

    eventually(configured_once, BOUND, "the new router configured once")
    sdk.network.remove_interface_from_router(router, subnet=sub.id)
    sdk.network.delete_router(router)
    time.sleep(0.3)
    bed.cloud.kill_orchestrator(signal.SIGKILL)  # in the middle of deleting
    bed.cloud.start_orchestrator()
    eventually(lambda: all(i.router_id != router.id for i in bed.instances()), BOUND, "r2 removed")
    assert len(instance_namespaces(PREFIX)) == 1  # the first router's, nothing of r2's


def test_broker_and_database_outage_loses_no_change(bed: RouterBed) -> None:
    sdk, project = bed.sdk, "chaos"
    net = sdk.network.find_network("n", project_id=project)
    ext = sdk.network.find_network("ext", project_id=project)
    ports = [sdk.network.create_port(network_id=net.id, project_id=project) for _ in range(2)]
    before = sdk.network.create_ip(
        floating_network_id=ext.id, port_id=ports[0].id, project_id=project
    )
    eventually(lambda: fips(bed) >= {before.floating_ip_address}, 30, "the first FIP applied")
    # A change whose events race the outage: the broker and the databases go right after it.
    during = sdk.network.create_ip(
        floating_network_id=ext.id, port_id=ports[1].id, project_id=project
    )
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
    subprocess.run(
        ["start-stop-daemon", "--stop", "--oknodo", "--retry", "30", "--exec", MARIADBD],
        check=True,
    )
    try:
        time.sleep(30)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        services.ensure_all()
    wanted = {before.floating_ip_address, during.floating_ip_address}
    eventually(lambda: fips(bed) >= wanted, 90, "every FIP applied after the outage")
    eventually(bed.pings_out, 30, "traffic after the outage")


def applied(bed: RouterBed, instance: Instance) -> int:
    with client(instance) as appliance:
        return appliance.health().generation or 0


def fips(bed: RouterBed) -> set[str]:
    with client(bed.instance()) as appliance:
        config = appliance.get_config()
    return {str(f.floating_ip) for f in config.floating_ips} if config else set()


def client(instance: Instance) -> ApplianceClient:
    creds = STATE / "orchestrator"
    return ApplianceClient(
        instance.management_address,
        ca=creds / "ca" / "ca.pem",
        cert=creds / "orchestrator-client.pem",
        key=creds / "orchestrator-client.pem",
    )


def test_drift_behind_astaras_back_is_repaired_in_place(bed: RouterBed) -> None:
    eventually(bed.pings_out, 30, "traffic before the drift")
    instance = bed.instance()
    ns = Namespace(bed.cloud.provider().names.instance_ns(instance.id))
    ns.run(["nft", "flush", "table", "ip", "astara_nat"])  # SNAT gone: nothing goes out
    assert not bed.pings_out()
    # The appliance's drift check (every 30 s) flags it in its heartbeats; the orchestrator
    # polls the router, whose step re-applies the document.
    eventually(bed.pings_out, 75, "SNAT repaired")
    assert bed.instance().id == instance.id  # repaired in place, not replaced
