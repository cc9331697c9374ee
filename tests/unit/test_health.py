"""The failure detector: the pure verdict and the monitor's probing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from astara.orchestrator.health import HealthMonitor, Verdict, assess
from tests.unit.clock import FakeClock

pytestmark = pytest.mark.unit

NOW = 1_000.0


@pytest.mark.parametrize(
    ("silent_for", "probe", "verdict"),
    [
        (0.0, None, Verdict.ALIVE),
        (8.0, None, Verdict.ALIVE),  # exactly the threshold: not yet
        (8.1, None, Verdict.SUSPECT),
        (8.1, True, Verdict.ALIVE),  # the heartbeat path is broken, the appliance is not
        (8.1, False, Verdict.DEAD),
        (3.0, False, Verdict.ALIVE),  # a failed probe alone never kills a beating instance
    ],
)
def test_assess(silent_for: float, probe: bool | None, verdict: Verdict) -> None:
    assert assess(NOW, NOW - silent_for, 2.0, 4, probe) is verdict


class FakeSource:
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def liveness(self) -> dict[str, float]:
        return dict(self.seen)


class FakeProbe:
    def __init__(self) -> None:
        self.answers: dict[str, bool] = {}
        self.calls: list[str] = []
        self.hang = threading.Event()

    def __call__(self, instance_id: str) -> bool:
        self.calls.append(instance_id)
        if instance_id == "hung":
            self.hang.wait(5)
        if instance_id == "broken":
            raise ConnectionRefusedError("refused")
        return self.answers.get(instance_id, False)


@dataclass
class Rig:
    source: FakeSource = field(default_factory=FakeSource)
    probe: FakeProbe = field(default_factory=FakeProbe)
    clock: FakeClock = field(default_factory=lambda: FakeClock(NOW))


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def monitor(rig: Rig) -> Iterator[HealthMonitor]:
    monitor = HealthMonitor(
        rig.source, rig.probe, rig.clock, interval=2.0, miss_threshold=4, probe_timeout=0.2
    )
    yield monitor
    rig.probe.hang.set()
    monitor.close()


def test_beating_instances_are_not_probed(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"a": NOW - 1, "b": NOW - 8}
    assert monitor.tick() == []
    assert rig.probe.calls == []


def test_silent_and_unanswering_is_dead_until_heard_again(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"a": NOW - 9, "ok": NOW}
    assert monitor.tick() == ["a"]
    rig.clock.now += 1
    assert monitor.tick() == ["a"]  # still dead, without probing again
    assert rig.probe.calls == ["a"]
    rig.source.seen["a"] = rig.clock.now  # it beats again (say, SIGCONT)
    assert monitor.tick() == []
    rig.source.seen.pop("a")  # unregistered once replaced
    assert monitor.tick() == []


def test_hung_and_raising_probes_count_as_failed(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"hung": NOW - 10, "broken": NOW - 10}
    assert monitor.tick() == ["broken", "hung"]


def test_a_successful_probe_vouches_for_one_threshold(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"a": NOW - 10}
    rig.probe.answers["a"] = True
    assert monitor.tick() == []
    rig.clock.now += 5
    assert monitor.tick() == []
    assert rig.probe.calls == ["a"]  # vouched: not probed again within the threshold
    rig.clock.now += 4
    rig.probe.answers["a"] = False
    assert monitor.tick() == ["a"]
    assert rig.probe.calls == ["a", "a"]


def test_probes_run_in_parallel(rig: Rig) -> None:
    rig.source.seen = {f"slow-{i}": NOW - 10 for i in range(5)}

    def slow(instance_id: str) -> bool:
        time.sleep(0.15)
        return True

    parallel = HealthMonitor(rig.source, slow, rig.clock, interval=2.0, probe_timeout=0.5)
    try:
        assert parallel.tick() == []  # five 0.15 s probes fit in a 0.5 s timeout together
    finally:
        parallel.close()
