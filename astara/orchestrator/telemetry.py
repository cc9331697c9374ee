"""What worker processes tell the parent: their load and what happened, over one queue.

Workers are processes of their own, and the parent alone serves the metrics and the
management API. So each worker sends, over one bounded queue, (1) its status every few
seconds: its pid, which router each of its threads is stepping and how many routers and events
wait (a message whose size depends on its threads, not on its routers), and (2) facts as they
happen: a replacement and its cause, an apply failure and its step, an event's time to
configured, a Neutron call's duration. A worker never blocks on the queue: what does not fit
is dropped and counted in its next status. In the parent, a ``Board`` keeps the latest status
of each worker and hands the facts to the metrics.
"""

from __future__ import annotations

import logging
import multiprocessing.queues
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from astara.orchestrator.worker import SchedulerStatus

LOG = logging.getLogger(__name__)


class Telemetry(Protocol):
    """Facts the reconciler reports; each is one sample of a metric."""

    def replaced(self, cause: str) -> None:
        """An instance was replaced (cause: rebuild, unreachable, boot_timeout...)."""

    def apply_failed(self, step: str) -> None:
        """Pushing a configuration failed at ``step``."""

    def configured(self, action: str, seconds: float) -> None:
        """A Neutron change (create, update) reached its appliance ``seconds`` after it
        arrived."""

    def neutron_call(self, operation: str, seconds: float, failed: bool) -> None:
        """One call to Neutron's API."""


class NoTelemetry:
    """Reports go nowhere (tools and tests that do not look at metrics)."""

    def replaced(self, cause: str) -> None:
        return None

    def apply_failed(self, step: str) -> None:
        return None

    def configured(self, action: str, seconds: float) -> None:
        return None

    def neutron_call(self, operation: str, seconds: float, failed: bool) -> None:
        return None


FACTS = frozenset({"replaced", "apply_failed", "configured", "neutron_call"})


@dataclass(frozen=True)
class Fact:
    worker: int
    name: str  # one of FACTS: the Telemetry method it is a call of
    args: tuple[str | float | bool, ...]


@dataclass(frozen=True)
class WorkerStatus:
    index: int
    pid: int
    at: float  # when it was taken (epoch seconds)
    scheduler: SchedulerStatus
    dropped: int  # messages the full queue refused so far


Message: TypeAlias = Fact | WorkerStatus
if TYPE_CHECKING:
    # None ends the stream (the parent's own, when it stops).
    Channel: TypeAlias = multiprocessing.queues.Queue[Message | None]


class ChannelTelemetry:
    """A worker's end: facts and statuses onto the channel, never blocking."""

    def __init__(self, channel: Channel, index: int) -> None:
        self._channel = channel
        self._index = index
        self.dropped = 0

    def send(self, message: Message) -> None:
        try:
            self._channel.put_nowait(message)
        except queue.Full:
            self.dropped += 1

    def _fact(self, name: str, *args: str | float | bool) -> None:
        self.send(Fact(self._index, name, args))

    def replaced(self, cause: str) -> None:
        self._fact("replaced", cause)

    def apply_failed(self, step: str) -> None:
        self._fact("apply_failed", step)

    def configured(self, action: str, seconds: float) -> None:
        self._fact("configured", action, seconds)

    def neutron_call(self, operation: str, seconds: float, failed: bool) -> None:
        self._fact("neutron_call", operation, seconds, failed)


class StatusReporter:
    """In a worker process: its status onto the channel every ``interval`` seconds."""

    def __init__(
        self,
        telemetry: ChannelTelemetry,
        index: int,
        status: Callable[[], SchedulerStatus],
        interval: float,
    ) -> None:
        self._telemetry = telemetry
        self._index = index
        self._status = status
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> None:
        self._telemetry.send(
            WorkerStatus(
                self._index, os.getpid(), time.time(), self._status(), self._telemetry.dropped
            )
        )

    def _run(self) -> None:
        self.report()
        while not self._stop.wait(self._interval):
            self.report()


class Board:
    """In the parent: the latest status of each worker; facts go on to ``sink``."""

    def __init__(self, channel: Channel, sink: Telemetry) -> None:
        self._channel = channel
        self._sink = sink
        self._latest: dict[int, WorkerStatus] = {}
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._channel.put(None)
        self._thread.join()

    def latest(self) -> dict[int, WorkerStatus]:
        return dict(self._latest)

    def take(self, message: Message) -> None:
        if isinstance(message, WorkerStatus):
            self._latest[message.index] = message
        elif message.name in FACTS:
            getattr(self._sink, message.name)(*message.args)

    def _run(self) -> None:
        while (message := self._channel.get()) is not None:
            try:
                self.take(message)
            except Exception:
                LOG.exception("worker %s: report not understood", getattr(message, "index", "?"))
