"""Workers' reports reach the parent's metrics and worker board, through a real process queue."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from prometheus_client import CollectorRegistry

from astara.orchestrator.health_loop import InstanceHealth
from astara.orchestrator.metrics import FleetCollector, Metrics
from astara.orchestrator.telemetry import Board, ChannelTelemetry, StatusReporter
from astara.orchestrator.worker import Worker

pytestmark = pytest.mark.unit


def test_facts_and_statuses_cross_the_queue_into_metrics_and_the_board() -> None:
    channel = multiprocessing.get_context("fork").Queue(maxsize=100)
    registry = CollectorRegistry()
    board = Board(channel, Metrics(registry))
    worker = Worker(lambda router_id, event: None, threads=2, name="worker3")
    sender = ChannelTelemetry(channel, 3)
    reporter = StatusReporter(sender, 3, worker.status, interval=60)
    board.start()
    try:
        sender.replaced("unreachable")
        sender.apply_failed("nftables")
        sender.configured("update", 0.3)
        sender.neutron_call("fetch_router", 0.02, True)
        reporter.report()
        deadline = time.monotonic() + 5
        while 3 not in board.latest() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        board.stop()
    value = registry.get_sample_value
    assert value("astara_instance_replacements_total", {"cause": "unreachable"}) == 1
    assert value("astara_apply_failures_total", {"step": "nftables"}) == 1
    assert (
        value("astara_event_to_configured_seconds_bucket", {"action": "update", "le": "0.5"}) == 1
    )
    assert value("astara_neutron_request_errors_total", {"operation": "fetch_router"}) == 1
    status = board.latest()[3]
    assert [t.name for t in status.scheduler.threads] == ["worker3-0", "worker3-1"]


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    channel = multiprocessing.get_context("fork").Queue(maxsize=1)
    sender = ChannelTelemetry(channel, 0)
    started = time.monotonic()
    for _ in range(5):
        sender.replaced("rebuild")
    assert time.monotonic() - started < 1.0
    assert sender.dropped == 4


def test_levels_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    counts = {"active": 2, "error": 1}
    registry.register(
        FleetCollector(
            lambda: counts,
            lambda: {InstanceHealth.ALIVE: 2, InstanceHealth.DEAD: 1},
            dict,
            lambda: [4, 0],
        )
    )
    value = registry.get_sample_value
    assert value("astara_routers", {"state": "active"}) == 2
    assert value("astara_routers", {"state": "unmanaged"}) == 0
    assert value("astara_instances", {"health": "dead"}) == 1
    assert value("astara_worker_queue_events", {"worker": "0"}) == 4
    counts["active"] = 5
    assert value("astara_routers", {"state": "active"}) == 5
