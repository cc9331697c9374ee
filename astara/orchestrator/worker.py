"""One worker process's scheduler: an inbox per router and a small pool of threads.

Thousands of routers share a few threads. A router is stepped by at most one thread at a time;
events that arrive while it is busy wait in its inbox, where they are coalesced, and the router
is stepped again as soon as the running step ends. A step may ask to be run again later (a boot
being awaited, a backoff): those wake-ups sit in a timer heap, and an event that arrives earlier
simply runs the step sooner.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from astara.orchestrator.events import Event
from astara.orchestrator.inbox import Inbox

LOG = logging.getLogger(__name__)

# Runs one step of a router: (router id, coalesced event or None for a timed wake-up) ->
# the monotonic time at which to run it again, or None.
Stepper = Callable[[str, Event | None], float | None]


@dataclass(frozen=True)
class ThreadStatus:
    name: str
    router_id: str | None  # the router it is stepping now
    since: float | None  # since when (epoch seconds)


@dataclass(frozen=True)
class SchedulerStatus:
    """A worker's load, in a size that does not grow with its routers."""

    threads: tuple[ThreadStatus, ...]
    routers: int  # routers with an inbox (events queued, or a wake-up scheduled)
    ready: int  # routers waiting for a thread
    scheduled: int  # timed wake-ups pending
    queued_events: int  # events waiting in inboxes


class Worker:
    def __init__(
        self,
        stepper: Stepper,
        threads: int = 4,
        clock: Callable[[], float] = time.monotonic,
        name: str = "worker",
    ) -> None:
        self._stepper = stepper
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._inboxes: dict[str, Inbox] = {}
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._stepping: dict[str, tuple[str, float]] = {}  # thread name -> (router, since)
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def submit(self, event: Event) -> None:
        with self._cond:
            inbox = self._inboxes.setdefault(event.resource_id, Inbox())
            inbox.put(event)
            self._mark_ready(event.resource_id)

    def wake_at(self, router_id: str, when: float) -> None:
        with self._cond:
            heapq.heappush(self._timers, (when, router_id))
            self._cond.notify()

    def pending(self) -> int:
        """Routers waiting for a thread (for metrics and tests)."""
        with self._cond:
            return len(self._ready) + len(self._busy)

    def status(self) -> SchedulerStatus:
        with self._cond:
            threads = tuple(
                ThreadStatus(t.name, *self._stepping.get(t.name, (None, None)))
                for t in self._threads
            )
            return SchedulerStatus(
                threads=threads,
                routers=len(self._inboxes),
                ready=len(self._ready),
                scheduled=len(self._timers),
                queued_events=sum(inbox.pending() for inbox in self._inboxes.values()),
            )

    def _mark_ready(self, router_id: str) -> None:
        if router_id not in self._queued and router_id not in self._busy:
            self._queued.add(router_id)
            self._ready.append(router_id)
            self._cond.notify()

    def _next(self) -> str | None:
        """The next router to step, waiting for one; None when stopping."""
        with self._cond:
            while not self._stopping:
                now = self._clock()
                while self._timers and self._timers[0][0] <= now:
                    _, router_id = heapq.heappop(self._timers)
                    self._mark_ready(router_id)
                if self._ready:
                    router_id = self._ready.popleft()
                    self._queued.discard(router_id)
                    self._busy.add(router_id)
                    return router_id
                timeout = self._timers[0][0] - now if self._timers else None
                self._cond.wait(timeout)
            return None

    def _run(self) -> None:
        me = threading.current_thread().name
        while (router_id := self._next()) is not None:
            with self._cond:
                inbox = self._inboxes.get(router_id)
                self._stepping[me] = (router_id, time.time())
            event = inbox.take() if inbox is not None else None
            retry_at: float | None = None
            try:
                retry_at = self._stepper(router_id, event)
            except Exception:
                LOG.exception("router %s: step failed; retrying in 5 s", router_id)
                retry_at = self._clock() + 5.0
            with self._cond:
                self._busy.discard(router_id)
                del self._stepping[me]
                if inbox is not None and inbox.pending():
                    self._mark_ready(router_id)
                elif inbox is not None and retry_at is None:
                    # Nothing queued and nothing scheduled: the inbox can go.
                    self._inboxes.pop(router_id, None)
                if retry_at is not None:
                    heapq.heappush(self._timers, (retry_at, router_id))
                    self._cond.notify()
