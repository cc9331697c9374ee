"""The worker steps each router on one thread at a time, coalescing what arrives meanwhile."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from astara.orchestrator.dispatcher import owner
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.worker import Worker

pytestmark = pytest.mark.unit


def event(router_id: str, action: EventAction = EventAction.UPDATE) -> Event:
    return Event(ResourceType.ROUTER, router_id, "p", action, "test", datetime.now(UTC))


class Recorder:
    """A stepper that records what it was asked to run; it can hold a step open."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, EventAction | None]] = []
        self.running: dict[str, int] = {}
        self.overlap = False
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.retry: dict[str, float] = {}

    def __call__(self, router_id: str, ev: Event | None) -> float | None:
        with self.lock:
            self.running[router_id] = self.running.get(router_id, 0) + 1
            self.overlap |= self.running[router_id] > 1
            self.calls.append((router_id, ev.action if ev else None))
        self.gate.wait(5)
        with self.lock:
            self.running[router_id] -= 1
        return self.retry.pop(router_id, None)


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_events_arriving_during_a_step_are_coalesced_into_one_more_step() -> None:
    rec = Recorder()
    worker = Worker(rec, threads=4)
    worker.start()
    try:
        rec.gate.clear()
        worker.submit(event("r1", EventAction.CREATE))
        wait_until(lambda: len(rec.calls) == 1)
        for _ in range(20):
            worker.submit(event("r1"))
        worker.submit(event("r1", EventAction.DELETE))
        rec.gate.set()
        wait_until(lambda: len(rec.calls) == 2 and worker.pending() == 0)
        time.sleep(0.1)
        assert rec.calls == [("r1", EventAction.CREATE), ("r1", EventAction.DELETE)]
        assert not rec.overlap
    finally:
        worker.stop()


def test_routers_run_in_parallel_and_a_step_can_ask_to_run_again() -> None:
    rec = Recorder()
    worker = Worker(rec, threads=3)
    worker.start()
    try:
        rec.retry["r2"] = time.monotonic() + 0.2
        for name in ("r1", "r2", "r3"):
            worker.submit(event(name))
        wait_until(lambda: ("r2", None) in rec.calls)
        assert sorted(c[0] for c in rec.calls if c[1] is EventAction.UPDATE) == ["r1", "r2", "r3"]
    finally:
        worker.stop()


def test_a_failing_step_is_retried_later() -> None:
    calls: list[str] = []

    def flaky(router_id: str, ev: Event | None) -> float | None:
        calls.append(router_id)
        raise RuntimeError("boom")

    clock = [0.0]
    worker = Worker(flaky, threads=1, clock=lambda: clock[0])
    worker.start()
    try:
        worker.submit(event("r1"))
        wait_until(lambda: len(calls) == 1)

        def later() -> bool:
            # Time moves on at each look (the retry may be scheduled after a first move).
            clock[0] += 10.0
            worker.wake_at("other", 0.0)  # nudges the thread to look at its timers again
            return calls.count("r1") == 2

        wait_until(later)
    finally:
        worker.stop()


def test_owner_is_stable_and_spreads_routers() -> None:
    ids = [f"router-{i}" for i in range(400)]
    owners = [owner(i, 4) for i in ids]
    assert owners == [owner(i, 4) for i in ids]
    assert all(60 < owners.count(n) < 140 for n in range(4))
