"""The parent's health loop: store -> receiver registrations, dead -> polls, breaker gate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from astara.orchestrator.breaker import CircuitBreaker
from astara.orchestrator.events import Event
from astara.orchestrator.health import HealthMonitor
from astara.orchestrator.health_loop import (
    BREAKER_FILE,
    HealthLoop,
    HeartbeatKeys,
    replacement_allowed,
)
from astara.orchestrator.heartbeat import HeartbeatReceiver
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.store import Store
from astara.wire.heartbeat import Heartbeat, encode
from tests.unit.clock import FakeClock
from tests.unit.test_health import settle
from tests.unit.test_heartbeat import LIMIT

pytestmark = pytest.mark.unit


def loop_with(
    tmp_path: Path, routers: int
) -> tuple[HealthLoop, HeartbeatReceiver, FakeClock, list[Event]]:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(url)
    store = Store(url)
    for n in range(routers):
        store.ensure_router(f"r{n}", "p")
        store.add_instance(f"i{n}", f"r{n}", "netns", f"i{n}", management_address=f"fd00::{n + 2}")
        store.update_instance(f"i{n}", ever_reachable=True)
    clock = FakeClock()
    registry = CollectorRegistry()
    receiver = HeartbeatReceiver(("::1", 0), registry, LIMIT, clock=clock)
    monitor = HealthMonitor(receiver, lambda iid: False, clock, interval=1.0, miss_threshold=3)
    breaker = CircuitBreaker(registry, clock, window=60, max_dead_share=0.3, min_deaths=3)
    sent: list[Event] = []
    loop = HealthLoop(
        store,
        receiver,
        monitor,
        breaker,
        HeartbeatKeys(tmp_path),
        sent.append,
        tmp_path,
        1.0,
        fresh_within=2.0,
        drift_poll_every=30.0,
        clock=clock,
    )
    return loop, receiver, clock, sent


def test_the_silent_instance_has_its_router_polled(tmp_path: Path) -> None:
    loop, receiver, clock, sent = loop_with(tmp_path, routers=10)
    keys = HeartbeatKeys(tmp_path)
    assert loop.tick() == []  # registered from the store, watched from now
    for second in range(1, 6):
        clock.now += 1
        for n in range(9):  # every instance but i9 keeps beating, with signed datagrams
            beat = Heartbeat(f"i{n}", second, clock.now, 1, "d")
            assert receiver.handle(encode(beat, keys.key_for(f"i{n}"))) is not None
        loop.tick()
    # Level-triggered: polled on every tick while dead (the inbox coalesces repeats).
    assert {e.resource_id for e in sent} == {"r9"}
    assert {(e.cause, e.instance_id) for e in sent} == {("health", "i9")}


def test_a_silent_or_dead_instance_keeps_the_periodic_reconcile_away(tmp_path: Path) -> None:
    loop, receiver, clock, _ = loop_with(tmp_path, routers=2)
    keys = HeartbeatKeys(tmp_path)
    loop.tick()

    def beat(second: int, *instances: str) -> None:
        for iid in instances:
            beat = Heartbeat(iid, second, clock.now, 1, "d")
            assert receiver.handle(encode(beat, keys.key_for(iid))) is not None

    beat(1, "i0", "i1")
    assert not loop.awaiting_verdict("r0")
    assert not loop.awaiting_verdict("r1")
    clock.now += 2.5  # i1 falls silent (fresh_within is 2 s)
    beat(2, "i0")
    assert loop.health_of("i1").status == "silent"
    assert loop.awaiting_verdict("r1")
    assert not loop.awaiting_verdict("r0")
    clock.now += 3
    beat(3, "i0")
    settle(loop)
    assert loop.health_of("i1").status == "dead"
    assert loop.awaiting_verdict("r1")
    assert not loop.awaiting_verdict("r0")


def test_a_replacement_is_watched_within_a_second_of_answering(tmp_path: Path) -> None:
    loop, _, clock, _ = loop_with(tmp_path, routers=2)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    loop.tick()
    for _ in range(3):  # the store unchanged: nothing new
        clock.now += 1
        loop.tick()
    store.add_instance("i-new", "r0", "netns", "i-new", management_address="fd00::99")
    clock.now += 1
    loop.tick()
    assert loop.health_of("i-new").status == "booting"  # followed, not yet judged
    store.update_instance("i-new", ever_reachable=True)
    clock.now += 1
    loop.tick()
    assert loop.health_of("i-new").status == "silent"  # watched: its silence now counts
    store.remove_instance("i1")
    clock.now += 1
    loop.tick()
    assert loop.health_of("i1").status == "unwatched"


def test_a_dead_instance_is_polled_every_tick_but_warned_of_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop, _, clock, sent = loop_with(tmp_path, routers=1)
    loop.tick()
    loop_logger = "astara.orchestrator.health_loop"
    with caplog.at_level(logging.DEBUG, logger=loop_logger):
        for _ in range(8):
            clock.now += 1
            loop.tick()
    polls = [e for e in sent if e.instance_id == "i0"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == loop_logger]
    assert len(polls) >= 3
    assert len(warnings) == 1


def test_a_fresh_heartbeat_vouches_for_its_instance(tmp_path: Path) -> None:
    loop, receiver, clock, _ = loop_with(tmp_path, routers=3)
    keys = HeartbeatKeys(tmp_path)
    loop.tick()
    beats = {
        "i0": Heartbeat("i0", 1, clock.now, 4, "d"),
        "i1": Heartbeat("i1", 1, clock.now, None, "d"),  # nothing applied yet
        "i2": Heartbeat("i2", 1, clock.now, 4, "d", drifted=True),
    }
    for iid, beat in beats.items():
        assert receiver.handle(encode(beat, keys.key_for(iid))) is not None
    assert loop.vouch("r0") == ("i0", 4)
    assert loop.vouch("r1") is None
    assert loop.vouch("r2") is None
    assert loop.vouch("r-unknown") is None
    clock.now += 2.5  # older than fresh_within
    assert loop.vouch("r0") is None


def test_a_router_being_replaced_is_not_vouched_for(tmp_path: Path) -> None:
    loop, receiver, clock, _ = loop_with(tmp_path, routers=1)
    Store(f"sqlite:///{tmp_path / 'store.sqlite'}").add_instance(
        "i-new", "r0", "netns", "i-new", management_address="fd00::99"
    )
    keys = HeartbeatKeys(tmp_path)
    loop.tick()
    assert receiver.handle(encode(Heartbeat("i0", 1, clock.now, 4, "d"), keys.key_for("i0")))
    assert loop.vouch("r0") is None  # two instances: the API must say which one is current


def test_drift_reported_by_heartbeat_polls_the_router_now_and_then(tmp_path: Path) -> None:
    loop, receiver, clock, sent = loop_with(tmp_path, routers=2)
    keys = HeartbeatKeys(tmp_path)
    loop.tick()
    for second in range(1, 41):
        clock.now += 1
        for n in range(2):
            beat = Heartbeat(f"i{n}", second, clock.now, 4, "d", drifted=n == 1)
            assert receiver.handle(encode(beat, keys.key_for(f"i{n}"))) is not None
        loop.tick()
    # Polled at once, then again after drift_poll_every while the appliance still says so.
    assert [(e.resource_id, e.cause, e.instance_id) for e in sent] == [("r1", "drift", "i1")] * 2


def test_mass_death_opens_the_breaker_until_an_operator_clears_it(tmp_path: Path) -> None:
    loop, _, clock, sent = loop_with(tmp_path, routers=4)
    allowed = replacement_allowed(tmp_path)
    loop.tick()
    clock.now += 5
    dead = settle(loop)
    assert dead == ["i0", "i1", "i2", "i3"]
    assert sent == []  # 4 of 4 dead: a network problem, nothing is replaced
    assert not allowed()
    assert "open" in (tmp_path / BREAKER_FILE).read_text()
    loop.clear_breaker()
    loop.tick()
    assert allowed()
    assert {e.resource_id for e in sent} == {"r0", "r1", "r2", "r3"}


def test_keys_are_per_instance_and_stable(tmp_path: Path) -> None:
    keys = HeartbeatKeys(tmp_path)
    assert keys.key_for("a") == HeartbeatKeys(tmp_path).key_for("a")
    assert keys.key_for("a") != keys.key_for("b")
    assert (tmp_path / "heartbeat.secret").stat().st_mode & 0o777 == 0o600


def test_an_unmanaged_routers_instance_is_neither_judged_nor_counted(tmp_path: Path) -> None:
    loop, receiver, clock, sent = loop_with(tmp_path, routers=4)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    keys = HeartbeatKeys(tmp_path)
    store.set_managed("r3", False)
    loop.tick()
    for second in range(1, 8):
        clock.now += 1
        for n in (0, 1, 3):  # i2 falls silent; i3 (unmanaged) keeps beating
            beat = Heartbeat(f"i{n}", second, clock.now, 1, "d")
            assert receiver.handle(encode(beat, keys.key_for(f"i{n}"))) is not None
        loop.tick()
    assert loop.health_of("i2").status == "dead"
    assert {e.resource_id for e in sent} == {"r2"}  # the positive signal: i2 is replaced
    sent.clear()
    for second in range(8, 15):  # now the unmanaged one falls silent too
        clock.now += 1
        for n in (0, 1):
            beat = Heartbeat(f"i{n}", second, clock.now, 1, "d")
            assert receiver.handle(encode(beat, keys.key_for(f"i{n}"))) is not None
        loop.tick()
    assert {e.resource_id for e in sent} == {"r2"}  # r3 is never polled
    assert loop.health_of("i3").status == "unwatched"
    assert loop.watched() == 3
    assert loop.breaker_view().open is False  # 1 death of 3 watched
    assert loop.health_counts()["unwatched"] == 1
