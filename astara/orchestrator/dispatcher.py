"""Routes events to worker processes: each router has exactly one owner.

The owner is a stable hash of the router id (stable across restarts and hosts, unlike
Python's hash()), so every event of a router reaches the same process and its inbox. Each
process's queue is bounded; a ``Feed`` coalesces per router what waits for room in it, so
``dispatch`` never blocks and a burst costs memory per router, not per event.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
from collections.abc import Callable
from functools import partial
from queue import Full
from typing import TYPE_CHECKING

from astara.orchestrator.events import Event
from astara.orchestrator.feed import Feed
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
        queue_size: int,
        status_interval: float = 2.0,
        channel_size: int = 10000,
    ) -> None:
        # fork: the factory may be a closure over the parsed configuration. Workers are
        # started before the listener's threads exist, so nothing is forked mid-operation.
        self._ctx = multiprocessing.get_context("fork")
        self._queues = [self._ctx.Queue(maxsize=queue_size) for _ in range(processes)]
        self._feeds = [
            Feed(partial(q.put, timeout=0.5), name=f"astara-feed-{i}")
            for i, q in enumerate(self._queues)
        ]
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
        """Events waiting for each worker: in its queue, and coalesced before it."""
        return [
            q.qsize() + feed.pending() for q, feed in zip(self._queues, self._feeds, strict=True)
        ]

    def start(self) -> None:
        for proc in self._procs:
            proc.start()
            LOG.info("started worker process %s (pid %s)", proc.name, proc.pid)
        for feed in self._feeds:  # threads only after the fork
            feed.start()

    def dispatch(self, event: Event) -> None:
        self._feeds[owner(event.resource_id, len(self._queues))].put(event)

    def alive(self) -> bool:
        return all(proc.is_alive() for proc in self._procs)

    def stop(self, timeout: float = 15.0) -> None:
        for feed in self._feeds:
            feed.stop()
        for queue in self._queues:
            with contextlib.suppress(Full):  # a worker that reads nothing is killed below
                queue.put(None, timeout=timeout)
        for proc in self._procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
