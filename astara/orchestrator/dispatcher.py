"""Routes events to worker processes: each router has exactly one owner.

The owner is a stable hash of the router id (stable across restarts and hosts, unlike
Python's hash()), so every event of a router reaches the same process and its inbox.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
from collections.abc import Callable
from typing import TYPE_CHECKING

from astara.orchestrator.events import Event
from astara.orchestrator.telemetry import ChannelTelemetry, StatusReporter, Telemetry
from astara.orchestrator.worker import Worker

if TYPE_CHECKING:
    from astara.orchestrator.telemetry import Channel

LOG = logging.getLogger(__name__)

# Builds the worker of process number i, inside that process (its own store session,
# Neutron connection and provider: nothing is shared across processes), reporting to the
# parent through the telemetry it is given.
WorkerFactory = Callable[[int, Telemetry], Worker]


def owner(resource_id: str, processes: int) -> int:
    digest = hashlib.sha256(resource_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % processes


def _serve(
    index: int,
    queue: multiprocessing.queues.Queue[Event | None],
    factory: WorkerFactory,
    channel: Channel,
    status_interval: float,
) -> None:
    telemetry = ChannelTelemetry(channel, index)
    worker = factory(index, telemetry)
    worker.start()
    reporter = StatusReporter(telemetry, index, worker.status, status_interval)
    reporter.start()
    while (event := queue.get()) is not None:
        worker.submit(event)
    reporter.stop()
    worker.stop()


class Dispatcher:
    def __init__(
        self,
        processes: int,
        factory: WorkerFactory,
        status_interval: float = 2.0,
        channel_size: int = 10000,
    ) -> None:
        # fork: the factory may be a closure over the parsed configuration. Workers are
        # started before the listener's threads exist, so nothing is forked mid-operation.
        self._ctx = multiprocessing.get_context("fork")
        self._queues = [self._ctx.Queue() for _ in range(processes)]
        # Workers -> parent: statuses and facts (astara.orchestrator.telemetry), bounded.
        self.channel: Channel = self._ctx.Queue(maxsize=channel_size)
        self._procs = [
            self._ctx.Process(
                target=_serve,
                args=(i, q, factory, self.channel, status_interval),
                name=f"astara-worker-{i}",
                daemon=True,
            )
            for i, q in enumerate(self._queues)
        ]

    @property
    def processes(self) -> int:
        return len(self._procs)

    def pids(self) -> list[int | None]:
        return [proc.pid if proc.is_alive() else None for proc in self._procs]

    def queue_sizes(self) -> list[int]:
        """Events waiting in each worker's queue."""
        return [queue.qsize() for queue in self._queues]

    def start(self) -> None:
        for proc in self._procs:
            proc.start()
            LOG.info("started worker process %s (pid %s)", proc.name, proc.pid)

    def dispatch(self, event: Event) -> None:
        self._queues[owner(event.resource_id, len(self._queues))].put(event)

    def alive(self) -> bool:
        return all(proc.is_alive() for proc in self._procs)

    def stop(self, timeout: float = 15.0) -> None:
        for queue in self._queues:
            queue.put(None)
        for proc in self._procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
