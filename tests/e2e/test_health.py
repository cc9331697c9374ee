"""Chaos: appliances killed, frozen, unplugged or removed are detected and replaced for real.

The real cloud-in-a-box (Neutron with Astara's plugin, RabbitMQ, astara-orchestrator, netns
appliances). A workload behind the router pings the outside world through SNAT; after each
failure, detection and replacement must bring that traffic back within BOUND seconds (a
generous bound: the real target, 15 s, is what bench/failure.py measures).
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from astara.appliance.heartbeat import Heartbeat, encode
from astara.orchestrator.health_loop import BREAKER_FILE, HeartbeatKeys
from astara.providers.base import Instance
from astara.testing.chaos import (
    FAILURES,
    RouterBed,
    build_router_bed,
    eventually,
    fresh_state,
    instance_namespaces,
    kill_appliance,
)
from astara.testing.cloud import CloudInABox
from astara.testing.neutron_bed import NeutronTestbed

pytestmark = pytest.mark.e2e

PREFIX = "ath"
STATE = Path("/var/lib/astara/e2e-health")
METRICS_PORT = 19311
BOUND = 45.0


@pytest.fixture(scope="module")
def bed() -> Iterator[RouterBed]:
    neutron = NeutronTestbed(
        state_dir=STATE / "neutron", database="astara_neutron_health", astara_plugin=True
    )
    cloud = CloudInABox(
        state_dir=STATE,
        bed=neutron,
        prefix=PREFIX,
        metrics_port=METRICS_PORT,
        # One router failing over and over is what this module does on purpose.
        health={"breaker_min_deaths": "1000"},
    )
    fresh_state(cloud)
    endpoint = cloud.up()
    try:
        yield build_router_bed(cloud, endpoint.url, 30)
    finally:
        cloud.down()


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_failure_is_detected_and_the_router_replaced(bed: RouterBed, kind: str) -> None:
    eventually(bed.pings_out, 30, "traffic before the failure")
    old = bed.instance()
    FAILURES[kind](bed, old)
    eventually(lambda: bed.replaced(old), BOUND, f"replacement after {kind}")
    assert not (STATE / "orchestrator" / BREAKER_FILE).exists()


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
    beat = Heartbeat(instance.id, 10**18, time.time(), 1, "x")
    before = rejected()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.sendto(encode(beat, b"not the key"), target)
        valid = encode(beat, key)
        sock.sendto(valid, target)
        sock.sendto(valid, target)  # the same sequence again: a replay
        sock.sendto(b"\x00garbage", target)

    def counted() -> bool:
        after = rejected()
        return all(after[r] >= before[r] + 1 for r in ("bad_signature", "replay", "malformed"))

    eventually(counted, 10, "the rejections counted")


def rejected() -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("astara_heartbeats_rejected_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found
