"""What watching 5,000 appliances costs the orchestrator: heartbeats received and judged.

    .venv/bin/python bench/heartbeats.py [--appliances 5000] [--interval 0.5] [--seconds 31]

A sender process plays the appliances: each beats every ``--interval`` from its own source
address (127.1.x.y) with its own key, as real appliances do (what it skips: TLS, the data
plane, and the appliance's own work of sending). Two receivers take the same load in turn on
loopback, and the CPU time of the receiving process is measured over ``--seconds``:

* Astara's: the production HealthLoop (heartbeat receiver reading in batches, health monitor
  ticking every half interval, the store's instance list followed every second, last-seen
  times flushed to the store every 30 s), on a SQLite store holding the 5,000 instances;
* the peer's way (Octavia's health manager): every datagram read on its own, checked with
  the same codec and written to the same store in a transaction of its own.

The datagrams a second are what the sender achieved and the receiver accepted. The last line is
``heartbeats: <n> appliances, <r> datagrams/s; astara <x> % of a core; peer <y> % at <s>/s``.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from astara.orchestrator.breaker import CircuitBreaker
from astara.orchestrator.health import HealthMonitor
from astara.orchestrator.health_loop import HealthLoop, HeartbeatKeys
from astara.orchestrator.heartbeat import HeartbeatReceiver, RateLimit
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.store import Store
from astara.wire.heartbeat import MAX_DATAGRAM, Heartbeat, HeartbeatRejected, decode, encode

LIMIT = RateLimit(10.0, 20, 65536)  # the production defaults
WARM_UP = 5.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def instance_id(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


def source(n: int) -> str:
    return f"127.1.{n // 250}.{n % 250 + 1}"


def send(secrets: Path, port: int, appliances: int, interval: float) -> None:
    """The appliances: one socket per source address, every one beating each interval."""
    keys = HeartbeatKeys(secrets)
    senders = []
    for n in range(appliances):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source(n), 0))
        senders.append((sock, instance_id(n), keys.key_for(instance_id(n))))
    sequence = 0
    chunk = max(1, appliances // 50)  # spread each round over its interval
    while True:
        started = time.monotonic()
        for first in range(0, appliances, chunk):
            for sock, iid, key in senders[first : first + chunk]:
                sequence += 1
                beat = Heartbeat(iid, int(time.time() * 1e6) + sequence, time.time(), 1, "d")
                sock.sendto(encode(beat, key), ("127.0.0.1", port))
            time.sleep(
                max(0.0, interval * (first + chunk) / appliances - (time.monotonic() - started))
            )


def populated_store(directory: Path, appliances: int) -> Store:
    url = f"sqlite:///{directory / 'store.sqlite'}"
    upgrade(url)
    store = Store(url)
    for n in range(appliances):
        iid = instance_id(n)
        store.ensure_router(f"r{n}", "p")
        store.add_instance(iid, f"r{n}", "netns", iid, management_address=source(n))
        store.update_instance(iid, ever_reachable=True)
    return store


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(seconds: float, received: Callable[[], float]) -> tuple[float, float]:
    """(share of a core, datagrams a second) over ``seconds`` after a warm-up."""
    time.sleep(WARM_UP)
    cpu0, count0, wall0 = cpu(), received(), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - wall0
    return (cpu() - cpu0) / wall, (received() - count0) / wall


def astara(
    directory: Path, port: int, appliances: int, interval: float, seconds: float
) -> tuple[float, float]:
    store = populated_store(directory, appliances)
    registry = CollectorRegistry()
    receiver = HeartbeatReceiver(("127.0.0.1", port), registry, LIMIT)
    monitor = HealthMonitor(receiver, lambda iid: True, interval=interval, registry=registry)
    breaker = CircuitBreaker(registry, window=120, max_dead_share=0.3, min_deaths=3)
    loop = HealthLoop(
        store,
        receiver,
        monitor,
        breaker,
        HeartbeatKeys(directory),
        lambda event: None,
        directory,
        interval=min(1.0, interval / 2),  # as the orchestrator builds it
        fresh_within=2 * interval,
    )
    loop.start()
    try:
        return measure(
            seconds, lambda: registry.get_sample_value("astara_heartbeats_accepted_total") or 0.0
        )
    finally:
        loop.stop()


def peer(directory: Path, port: int, seconds: float) -> tuple[float, float]:
    """Octavia's way: a datagram, a check, a database transaction; then the next datagram."""
    store = Store(f"sqlite:///{directory / 'store.sqlite'}")
    keys = HeartbeatKeys(directory)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.5)
    handled = [0]
    stop = threading.Event()
    last: dict[str, int] = {}

    def serve() -> None:
        while not stop.is_set():
            try:
                datagram, _ = sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            now = time.time()
            try:
                beat = decode(datagram, keys.key_for, now, 30.0, last.get)
            except HeartbeatRejected:
                continue
            last[beat.instance_id] = beat.sequence
            store.record_last_seen({beat.instance_id: now})
            handled[0] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return measure(seconds, lambda: float(handled[0]))
    finally:
        stop.set()
        thread.join()
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appliances", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=31.0, help="one store flush included")
    parser.add_argument("--send", nargs=2, metavar=("SECRETS", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        send(Path(args.send[0]), int(args.send[1]), args.appliances, args.interval)
        return 0
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.appliances + 1024,) * 2)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        port = 15999
        HeartbeatKeys(directory)  # the secret both sides derive keys from
        argv = [sys.executable, __file__, "--appliances", str(args.appliances)]
        argv += ["--interval", str(args.interval), "--send", tmp, str(port)]
        sender = subprocess.Popen(argv)
        try:
            say(f"astara: {args.appliances} appliances beating every {args.interval} s")
            ours, rate = astara(directory, port, args.appliances, args.interval, args.seconds)
            say(f"astara: {ours * 100:.1f} % of a core at {rate:.0f} datagrams/s")
            say("peer: a database transaction per heartbeat")
            theirs, their_rate = peer(directory, port, args.seconds)
            say(f"peer: {theirs * 100:.1f} % of a core at {their_rate:.0f} datagrams/s")
        finally:
            sender.terminate()
            sender.wait()
    print(
        f"heartbeats: {args.appliances} appliances, {rate:.0f} datagrams/s; "
        f"astara {ours * 100:.1f} % of a core; peer {theirs * 100:.1f} % at {their_rate:.0f}/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
