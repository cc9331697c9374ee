"""Failure detection and recovery: how fast a broken appliance is noticed and replaced.

    .venv/bin/python bench/failure.py [--per-kind 20]      (as root)

The real cloud-in-a-box (prefix ``abf``): one router, one workload behind it pinging the
outside world every 100 ms. Each of the four failures of astara.testing.chaos (kill -9, SIGSTOP,
namespace deleted, management link cut) is inflicted ``--per-kind`` times. Detection is the
time from the failure to the replacement instance being booted (the orchestrator has decided
the old one is dead); outage is the longest gap between two answered pings around the failure
(last packet lost to first packet through). Prints p50 and p99 of both; the last line is
``failure: detect p99 <s> s, outage p99 <s> s over <n> kills``.
The orchestrator runs with the production [health] defaults (heartbeats every 0.5 s, a probe
after 1.5 s of silence, 2.5 s for it to answer). Targets: detection p99 <= 5 s, outage p99 <=
6 s. For scale, OVN's BFD finds a dead gateway in about 3 s, and Octavia's default settings
take 50 to 63 s to notice a dead amphora (shared/reference/peers-and-targets.md).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

from astara.testing.chaos import FAILURES, RouterBed, build_router_bed, eventually, fresh_state
from astara.testing.cloud import CloudInABox
from astara.testing.neutron_bed import NeutronTestbed

STATE = Path("/var/lib/astara/bench-failure")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def longest_gap(ping_output: str, since: float) -> float:
    """Largest interval between answered pings (``ping -D`` timestamps) after ``since``."""
    stamps = [
        float(line[1 : line.index("]")])
        for line in ping_output.splitlines()
        if line.startswith("[") and "bytes from" in line
    ]
    relevant = [t for t in stamps if t >= since - 1.0]
    return max((b - a for a, b in itertools.pairwise(relevant)), default=0.0)


def one_failure(bed: RouterBed, kind: str) -> tuple[float, float]:
    eventually(bed.pings_out, 60, "traffic before the failure")
    old = bed.instance()
    pinger = subprocess.Popen(
        bed.vm.namespace.argv(["ping", "-D", "-i", "0.1", "-W", "1", bed.outside_ip]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)
    broken_at = time.time()
    FAILURES[kind](bed, old)
    eventually(lambda: any(i.id != old.id for i in bed.instances()), 120, "detection")
    detected = time.time() - broken_at
    eventually(lambda: bed.replaced(old), 120, "recovery")
    time.sleep(1.0)
    pinger.terminate()
    output, _ = pinger.communicate(timeout=10)
    return detected, longest_gap(output, broken_at)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=20)
    args = parser.parse_args()
    neutron = NeutronTestbed(
        state_dir=STATE / "neutron", database="astara_neutron_failure", astara_plugin=True
    )
    cloud = CloudInABox(
        state_dir=STATE,
        bed=neutron,
        prefix="abf",
        # One router failing 80 times on purpose is no mass failure.
        health={"breaker_min_deaths": "100000"},
    )
    fresh_state(cloud)
    endpoint = cloud.up()
    detections: list[float] = []
    outages: list[float] = []
    by_kind: dict[str, list[float]] = {}
    try:
        bed = build_router_bed(cloud, endpoint.url, 40)
        for kind in sorted(FAILURES):
            for n in range(args.per_kind):
                detected, outage = one_failure(bed, kind)
                detections.append(detected)
                outages.append(outage)
                by_kind.setdefault(kind, []).append(detected)
                say(f"  {kind:<17} #{n + 1:<3} detected {detected:5.2f} s, outage {outage:5.2f} s")
    finally:
        cloud.down()
    for kind, times in by_kind.items():
        say(f"{kind}: detection p50 {statistics.median(times):.2f} s, max {max(times):.2f} s")
    say(
        f"detection p50 {statistics.median(detections):.2f} s; "
        f"outage p50 {statistics.median(outages):.2f} s"
    )
    print(
        f"failure: detect p99 {percentile(detections, 0.99):.2f} s, "
        f"outage p99 {percentile(outages, 0.99):.2f} s over {len(detections)} kills"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
