"""Heartbeats over real UDP between two namespaces, and failure detection end to end.

tG-a plays the appliance: a separate process sending heartbeats and answering a health
endpoint. tG-o plays the orchestrator: the receiver's socket and the probe's connections are
opened inside it from this test process (setns on the calling thread only).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import CollectorRegistry

from astara.orchestrator.health import HealthMonitor
from astara.orchestrator.heartbeat import HeartbeatReceiver
from astara.wire.defaults import API_PORT
from astara.wire.heartbeat import Heartbeat, encode
from tests.unit.test_heartbeat import LIMIT

pytestmark = pytest.mark.functional

APPLIANCE_NS, ORCHESTRATOR_NS = "tG-a", "tG-o"
APPLIANCE_IP, ORCHESTRATOR_IP = "10.251.0.1", "10.251.0.2"
INSTANCE = "tG-instance-1"
KEY = os.urandom(32)
INTERVAL = 0.2
THRESHOLD = 4
PROBE_TIMEOUT = 0.5
CLONE_NEWNET = 0x40000000

# The appliance side: a heartbeat sender plus a health endpoint, in one process so that a
# SIGSTOP freezes both (process alive, API hung).
APPLIANCE = """
import http.server, sys, threading
from astara.appliance.heartbeat import HeartbeatSender, RunningState

instance, key, host, port, interval, api = sys.argv[1:]

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("0.0.0.0", int(api)), Health)
sender = HeartbeatSender(
    instance, bytes.fromhex(key), (host, int(port)),
    lambda: RunningState(generation=3, digest="sha256:feed"), interval=float(interval),
)
sender.start()
server.serve_forever()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``name``; sockets made here stay there."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as target, open("/proc/thread-self/ns/net") as home:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)


def remove_namespaces() -> None:
    for ns in (APPLIANCE_NS, ORCHESTRATOR_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[None]:
    remove_namespaces()
    try:
        ip("netns", "add", APPLIANCE_NS)
        ip("netns", "add", ORCHESTRATOR_NS)
        ip("link", "add", "tG-a0", "netns", APPLIANCE_NS, "type", "veth",
           "peer", "tG-o0", "netns", ORCHESTRATOR_NS)  # fmt: skip
        for ns, dev, addr in (
            (APPLIANCE_NS, "tG-a0", APPLIANCE_IP),
            (ORCHESTRATOR_NS, "tG-o0", ORCHESTRATOR_IP),
        ):
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        remove_namespaces()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def receiver(namespaces: None, registry: CollectorRegistry) -> Iterator[HeartbeatReceiver]:
    # No batch window: each datagram is stamped on arrival, to time the sender's rhythm.
    receiver = HeartbeatReceiver((ORCHESTRATOR_IP, 0), registry, LIMIT, batch_window=0.0)
    receiver.register(INSTANCE, KEY)
    with netns(ORCHESTRATOR_NS):
        receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def appliance(receiver: HeartbeatReceiver) -> Iterator[subprocess.Popen[bytes]]:
    host, port = receiver.address
    args = [INSTANCE, KEY.hex(), host, str(port), str(INTERVAL), str(API_PORT)]
    # `ip netns exec` execs the command, so the pid is the appliance's own.
    process = subprocess.Popen(
        ["ip", "netns", "exec", APPLIANCE_NS, sys.executable, "-c", APPLIANCE, *args]
    )
    try:
        deadline = time.monotonic() + 10
        while receiver.last_seen(INSTANCE) is None:
            assert process.poll() is None, "the appliance process died"
            assert time.monotonic() < deadline, "no heartbeat within 10 s"
            time.sleep(0.02)
        yield process
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(5)  # reaped: PID 1 here does not reap orphans


def accepted(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("astara_heartbeats_accepted_total") or 0.0


def rejected(registry: CollectorRegistry, reason: str) -> float:
    labels = {"reason": reason}
    return registry.get_sample_value("astara_heartbeats_rejected_total", labels) or 0.0


def test_heartbeats_arrive_every_interval(
    appliance: subprocess.Popen[bytes], receiver: HeartbeatReceiver, registry: CollectorRegistry
) -> None:
    arrivals: list[float] = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        seen = receiver.last_seen(INSTANCE)
        if seen is not None and (not arrivals or seen != arrivals[-1]):
            arrivals.append(seen)
        time.sleep(0.005)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) >= 8
    assert statistics.median(gaps) == pytest.approx(INTERVAL, abs=0.03)
    assert max(gaps) < 2 * INTERVAL
    beat = receiver.snapshot()[INSTANCE].heartbeat
    assert (beat.generation, beat.digest) == (3, "sha256:feed")
    assert sum(rejected(registry, r) for r in ("replay", "stale", "bad_signature")) == 0


def test_bad_datagrams_are_rejected_and_counted(
    receiver: HeartbeatReceiver, registry: CollectorRegistry
) -> None:
    now = time.time()
    good = Heartbeat(INSTANCE, sequence=10, sent_at=now, generation=1, digest="d")
    datagrams = {
        "accepted": encode(good, KEY),
        "replay": encode(good, KEY),  # the same bytes again
        "bad_signature": encode(good._replace(sequence=11), os.urandom(32)),
        "malformed": b"\x00" * 40,
        "stale": encode(good._replace(sequence=12, sent_at=now - 600), KEY),
        "unknown_instance": encode(good._replace(instance_id="tG-nobody"), KEY),
    }
    with netns(APPLIANCE_NS), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams.values():
            sock.sendto(datagram, receiver.address)
            time.sleep(0.02)  # keep the order: the replay must come after the original
    deadline = time.monotonic() + 2
    while accepted(registry) + sum(rejected(registry, r) for r in datagrams) < len(datagrams):
        assert time.monotonic() < deadline, "datagrams went missing"
        time.sleep(0.01)
    assert accepted(registry) == 1
    assert {r: rejected(registry, r) for r in datagrams if r != "accepted"} == {
        "replay": 1,
        "bad_signature": 1,
        "malformed": 1,
        "stale": 1,
        "unknown_instance": 1,
    }
    assert receiver.snapshot()[INSTANCE].heartbeat.sequence == 10


def http_probe(instance_id: str) -> bool:
    """The active probe: GET the appliance's health endpoint from the orchestrator side."""
    with (
        netns(ORCHESTRATOR_NS),
        socket.create_connection((APPLIANCE_IP, API_PORT), timeout=PROBE_TIMEOUT) as conn,
    ):
        conn.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
        return conn.recv(64).startswith(b"HTTP/1.0 200")


def freeze(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGSTOP)


def kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()


def cut_link(process: subprocess.Popen[bytes]) -> None:
    ip("-n", APPLIANCE_NS, "link", "set", "tG-a0", "down")


@pytest.mark.parametrize("failure", [freeze, kill, cut_link], ids=["sigstop", "kill9", "link"])
def test_failure_is_detected_within_threshold_plus_probe(
    appliance: subprocess.Popen[bytes], receiver: HeartbeatReceiver, failure
) -> None:
    monitor = HealthMonitor(
        receiver,
        http_probe,
        interval=INTERVAL,
        miss_threshold=THRESHOLD,
        probe_timeout=PROBE_TIMEOUT,
    )
    try:
        assert http_probe(INSTANCE)  # the probe works while the appliance is healthy
        for _ in range(10):
            assert monitor.tick() == []
            time.sleep(INTERVAL / 2)
        failed_at = time.time()
        failure(appliance)
        while not monitor.tick():
            assert time.time() - failed_at < 5, "never declared dead"
            time.sleep(0.05)
        detected = time.time() - failed_at
        assert monitor.tick() == [INSTANCE]  # it stays dead
    finally:
        monitor.close()
    # The last beat may be up to one interval old when the failure starts; the slack covers
    # the tick period and scheduling.
    assert INTERVAL * (THRESHOLD - 1) <= detected <= INTERVAL * THRESHOLD + PROBE_TIMEOUT + 0.5
    print(f"{failure.__name__}: detected in {detected:.2f} s")
