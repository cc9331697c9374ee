"""The orchestrator's Prometheus series, served by the parent process (``metrics_port``).

Two kinds: samples reported as they happen (``Metrics``, fed by the parent's own calls and by
the workers' facts through the telemetry board), and levels read when Prometheus scrapes
(``FleetCollector``: routers by state from the store, instances by health from the health
loop, each worker's queues from its latest status). The breaker and heartbeat series are
registered by the breaker and the heartbeat receiver themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from astara.orchestrator.health_loop import InstanceHealth
from astara.orchestrator.state import State
from astara.orchestrator.telemetry import WorkerStatus

LOG = logging.getLogger(__name__)

# From a fast apply (tens of ms) to a slow Nova boot (minutes).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
NEUTRON_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The counters and histograms; a ``Telemetry`` sink."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._replacements = Counter(
            "astara_instance_replacements_total",
            "Instances replaced, by cause (rebuild: an operator; unreachable: found dead or "
            "not answering; boot_timeout; instance_failed: the provider gave up on it)",
            ["cause"],
            registry=registry,
        )
        self._apply_failures = Counter(
            "astara_apply_failures_total",
            "Configuration pushes that failed, by step (the appliance's failing step, or "
            "unreachable, rejected, plug)",
            ["step"],
            registry=registry,
        )
        self._configured = Histogram(
            "astara_event_to_configured_seconds",
            "From a Neutron change arriving to its router's appliance running it",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._neutron_latency = Histogram(
            "astara_neutron_request_duration_seconds",
            "Duration of calls to Neutron's API, by operation",
            ["operation"],
            buckets=NEUTRON_BUCKETS,
            registry=registry,
        )
        self._neutron_errors = Counter(
            "astara_neutron_request_errors_total",
            "Calls to Neutron's API that failed (an exception or an error status), by operation",
            ["operation"],
            registry=registry,
        )

    def replaced(self, cause: str) -> None:
        self._replacements.labels(cause).inc()

    def apply_failed(self, step: str) -> None:
        self._apply_failures.labels(step).inc()

    def configured(self, action: str, seconds: float) -> None:
        self._configured.labels(action).observe(seconds)

    def neutron_call(self, operation: str, seconds: float, failed: bool) -> None:
        self._neutron_latency.labels(operation).observe(seconds)
        if failed:
            self._neutron_errors.labels(operation).inc()


class FleetCollector(Collector):
    """Levels computed at scrape time (nothing to keep in step between scrapes)."""

    def __init__(
        self,
        routers_by_state: Callable[[], Mapping[str, int]],
        instances_by_health: Callable[[], Mapping[InstanceHealth, int]],
        workers: Callable[[], Mapping[int, WorkerStatus]],
        queue_sizes: Callable[[], list[int]],
    ) -> None:
        self._routers_by_state = routers_by_state
        self._instances_by_health = instances_by_health
        self._workers = workers
        self._queue_sizes = queue_sizes

    def collect(self) -> Iterator[Metric]:
        yield from self._routers()
        instances = GaugeMetricFamily(
            "astara_instances", "Watched instances by health", labels=["health"]
        )
        for health, count in self._instances_by_health().items():
            instances.add_metric([health.value], count)
        yield instances
        yield from self._worker_series()

    def _routers(self) -> Iterator[Metric]:
        try:
            counts = self._routers_by_state()
        except Exception:
            LOG.exception("routers by state: the store could not be read")
            return
        routers = GaugeMetricFamily("astara_routers", "Routers by state", labels=["state"])
        for state in State:
            routers.add_metric([state.value], counts.get(state.value, 0))
        yield routers

    def _worker_series(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "astara_worker_queue_events",
            "Events waiting for a worker process to take them from its queue",
            labels=["worker"],
        )
        for index, size in enumerate(self._queue_sizes()):
            queued.add_metric([str(index)], size)
        yield queued
        inbox = GaugeMetricFamily(
            "astara_worker_inbox_events",
            "Events a worker holds in its routers' inboxes (after coalescing)",
            labels=["worker"],
        )
        ready = GaugeMetricFamily(
            "astara_worker_ready_routers",
            "Routers waiting for one of the worker's threads",
            labels=["worker"],
        )
        busy = GaugeMetricFamily(
            "astara_worker_busy_threads", "Worker threads stepping a router", labels=["worker"]
        )
        dropped = CounterMetricFamily(
            "astara_worker_reports_dropped",
            "Reports a worker could not send to the parent (its queue was full)",
            labels=["worker"],
        )
        for index, status in sorted(self._workers().items()):
            label = [str(index)]
            scheduler = status.scheduler
            inbox.add_metric(label, scheduler.queued_events)
            ready.add_metric(label, scheduler.ready)
            busy.add_metric(label, sum(1 for t in scheduler.threads if t.router_id))
            dropped.add_metric(label, status.dropped)
        yield from (inbox, ready, busy, dropped)
