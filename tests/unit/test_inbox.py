"""Coalescing in a resource's inbox, sequentially and under concurrent producers."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.inbox import Inbox

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CREATE, UPDATE, DELETE, POLL, REBUILD = (
    EventAction.CREATE,
    EventAction.UPDATE,
    EventAction.DELETE,
    EventAction.POLL,
    EventAction.REBUILD,
)


def event(action: EventAction, n: int = 0, cause: str | None = None) -> Event:
    return Event(
        ResourceType.ROUTER,
        "r1",
        "p1",
        action,
        cause or f"{action}-{n}",
        T0 + timedelta(seconds=n),
    )


def drain(inbox: Inbox) -> list[EventAction]:
    actions = []
    while (taken := inbox.take()) is not None:
        actions.append(taken.action)
    return actions


def fed(*actions: EventAction) -> Inbox:
    inbox = Inbox()
    for n, action in enumerate(actions):
        inbox.put(event(action, n))
    return inbox


@pytest.mark.parametrize(
    ("queued", "expected"),
    [
        ([], []),
        ([UPDATE, UPDATE, UPDATE], [UPDATE]),
        ([POLL, POLL], [POLL]),
        ([POLL, UPDATE, POLL], [UPDATE]),
        ([CREATE, UPDATE], [CREATE]),
        ([UPDATE, CREATE], [CREATE]),
        ([UPDATE, REBUILD, UPDATE], [REBUILD]),
        ([CREATE, UPDATE, DELETE], [DELETE]),
        ([REBUILD, DELETE], [DELETE]),
        ([DELETE, POLL], [DELETE]),
        ([DELETE, CREATE], [DELETE, CREATE]),
        ([DELETE, CREATE, UPDATE, POLL], [DELETE, CREATE]),
        ([DELETE, UPDATE], [DELETE, UPDATE]),
        ([DELETE, CREATE, DELETE], [DELETE]),
        ([DELETE, DELETE], [DELETE]),
    ],
)
def test_coalescing(queued: list[EventAction], expected: list[EventAction]) -> None:
    assert drain(fed(*queued)) == expected


def test_merged_event_keeps_the_first_arrival_and_the_winning_cause() -> None:
    inbox = Inbox()
    inbox.put(event(UPDATE, 1, "router.update.end"))
    inbox.put(event(CREATE, 2, "router.create.end"))
    inbox.put(event(POLL, 3, "health"))
    taken = inbox.take()
    assert taken is not None
    assert (taken.action, taken.cause) == (CREATE, "router.create.end")
    assert taken.received_at == T0 + timedelta(seconds=1)


def test_what_a_cause_says_of_an_instance_stays_with_that_cause() -> None:
    inbox = Inbox()
    inbox.put(replace(event(POLL, 1, "health"), instance_id="dead-one"))
    inbox.put(replace(event(UPDATE, 2, "router.update.end")))
    inbox.put(replace(event(POLL, 3, "reconcile"), instance_id="i1", reported_generation=4))
    taken = inbox.take()
    assert taken is not None
    assert (taken.cause, taken.instance_id, taken.reported_generation) == (
        "router.update.end",
        None,
        None,
    )


def test_take_runs_what_is_queued_then_new_arrivals_start_afresh() -> None:
    inbox = fed(UPDATE)
    assert inbox.pending() == 1
    assert drain(inbox) == [UPDATE]
    assert inbox.pending() == 0
    inbox.put(event(POLL, 5))
    assert drain(inbox) == [POLL]


def test_concurrent_producers_coalesce_and_a_final_delete_wins() -> None:
    inbox = Inbox()
    producers = 8
    per_producer = 2000
    start = threading.Barrier(producers + 1)
    taken: list[Event] = []
    most_pending = 0
    done = threading.Event()

    def produce(k: int) -> None:
        start.wait()
        for n in range(per_producer):
            inbox.put(event(UPDATE if (n + k) % 3 else POLL, n))

    def consume() -> None:
        nonlocal most_pending
        start.wait()
        while not done.is_set():
            most_pending = max(most_pending, inbox.pending())
            if (got := inbox.take()) is not None:
                taken.append(got)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    consumer = threading.Thread(target=consume)
    for thread in [*threads, consumer]:
        thread.start()
    for thread in threads:
        thread.join()
    inbox.put(event(DELETE, per_producer))
    done.set()
    consumer.join()
    taken.extend(e for e in iter(inbox.take, None))

    # Updates and polls never pile up: at most one merged entry waits at any time.
    assert most_pending <= 1
    assert 1 <= len(taken) < producers * per_producer
    assert taken[-1].action is DELETE
    assert all(e.action in (UPDATE, POLL) for e in taken[:-1])
