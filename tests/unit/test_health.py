"""The failure detector: the pure verdict and the monitor's probing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from astara.orchestrator.health import HealthMonitor, Verdict, assess, provider_first_probe
from astara.providers.base import InstanceSpec, PortSpec, ProviderError
from astara.providers.noop import NoopProvider
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


class Ticking(Protocol):
    """The HealthMonitor, or the HealthLoop around one."""

    def tick(self) -> list[str]: ...
    def probing(self) -> int: ...
    def wait(self, timeout: float) -> None: ...


def settle(watcher: Ticking) -> list[str]:
    """Tick, let the probes that tick started end (each wakes ``wait``), tick again."""
    watcher.tick()
    deadline = time.monotonic() + 5
    while watcher.probing() and time.monotonic() < deadline:
        watcher.wait(0.05)
    return watcher.tick()


def test_beating_instances_are_not_probed(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"a": NOW - 1, "b": NOW - 8}
    assert settle(monitor) == []
    assert rig.probe.calls == []


def test_silent_and_unanswering_is_dead_until_heard_again(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"a": NOW - 9, "ok": NOW}
    assert monitor.tick() == []  # probing: a tick never waits for a probe
    assert settle(monitor) == ["a"]
    rig.clock.now += 1
    assert monitor.tick() == ["a"]  # still dead, without probing again
    assert rig.probe.calls == ["a"]
    rig.source.seen["a"] = rig.clock.now  # it beats again (say, SIGCONT)
    assert monitor.tick() == []
    rig.source.seen.pop("a")  # unregistered once replaced
    assert monitor.tick() == []


def test_a_refusing_instance_is_dead_while_a_hung_one_is_still_probed(
    monitor: HealthMonitor, rig: Rig
) -> None:
    rig.source.seen = {"hung": NOW - 10, "broken": NOW - 10}
    assert monitor.tick() == []
    monitor.wait(5)  # woken by the first probe to end: the refused one
    assert monitor.tick() == ["broken"]  # not held up by the hung probe
    rig.clock.now += 0.1
    assert monitor.tick() == ["broken"]  # the hung one is within its timeout
    rig.clock.now += 0.15
    assert monitor.tick() == ["broken", "hung"]


def test_a_probe_waiting_for_a_thread_has_not_started_its_timeout(rig: Rig) -> None:
    rig.source.seen = {"hung": NOW - 10}
    one = HealthMonitor(
        rig.source, rig.probe, rig.clock, interval=2.0, probe_timeout=0.2, max_parallel_probes=1
    )
    try:
        assert one.tick() == []
        rig.source.seen["queued"] = NOW - 10
        assert one.tick() == []
        rig.clock.now += 1
        assert one.tick() == ["hung"]  # the queued one never ran: not judged yet
        rig.probe.hang.set()
        deadline = time.monotonic() + 5
        while "queued" not in rig.probe.calls and time.monotonic() < deadline:
            one.wait(0.05)
        assert settle(one) == ["hung", "queued"]
    finally:
        one.close()


def test_an_answer_after_a_stall_spares_the_instance(rig: Rig) -> None:
    """A CPU-starved appliance answers late but within the timeout: it is not replaced."""
    stalled = threading.Event()

    def slow(instance_id: str) -> bool:
        stalled.wait(5)
        return True

    patient = HealthMonitor(rig.source, slow, rig.clock, interval=2.0, probe_timeout=3.0)
    try:
        rig.source.seen = {"a": NOW - 9}
        assert patient.tick() == []
        rig.clock.now += 2.9
        assert patient.tick() == []  # still within the timeout
        stalled.set()
        assert settle(patient) == []
        rig.clock.now += 5
        assert patient.tick() == []  # vouched for a threshold by the answer
    finally:
        patient.close()


def test_a_heartbeat_during_the_probe_makes_its_failure_moot(
    monitor: HealthMonitor, rig: Rig
) -> None:
    rig.source.seen = {"hung": NOW - 10}
    assert monitor.tick() == []
    rig.source.seen["hung"] = rig.clock.now  # beats again while the probe hangs
    rig.clock.now += 1
    assert monitor.tick() == []
    assert monitor.probing() == 0


def test_a_successful_probe_vouches_for_one_threshold(monitor: HealthMonitor, rig: Rig) -> None:
    rig.source.seen = {"a": NOW - 10}
    rig.probe.answers["a"] = True
    assert settle(monitor) == []
    rig.clock.now += 5
    assert monitor.tick() == []
    assert rig.probe.calls == ["a"]  # vouched: not probed again within the threshold
    rig.clock.now += 4
    rig.probe.answers["a"] = False
    assert settle(monitor) == ["a"]
    assert rig.probe.calls == ["a", "a"]


def test_probes_run_in_parallel(rig: Rig) -> None:
    rig.source.seen = {f"slow-{i}": NOW - 10 for i in range(5)}
    together = threading.Barrier(5, timeout=5)

    def meet(instance_id: str) -> bool:
        together.wait()  # breaks (and the probe fails) unless all five run at once
        return True

    parallel = HealthMonitor(rig.source, meet, rig.clock, interval=2.0, probe_timeout=10)
    try:
        assert settle(parallel) == []
        assert not together.broken
    finally:
        parallel.close()


# --- the confirming probe: the provider first, then the appliance's API ----------------------


def booted(provider: NoopProvider, instance_id: str) -> None:
    ports = (PortSpec(port_id="m", network_id="mgmt", mac="02:00:00:00:00:01", kind="management"),)
    provider.boot(InstanceSpec(instance_id=instance_id, router_id="r1", ports=ports))


def test_the_probe_takes_the_providers_word_that_an_instance_is_gone_or_failed() -> None:
    provider, asked = NoopProvider(), []
    booted(provider, "i-failed")
    provider.fail_instance("i-failed", "host down")
    probe = provider_first_probe(lambda iid: "fd00::5", lambda: provider, asked.append)
    assert probe("i-failed") is False
    assert probe("i-gone") is False
    assert asked == []  # no API timeout waited for


def test_a_running_instance_or_a_provider_in_trouble_leaves_it_to_the_api() -> None:
    provider = NoopProvider()
    booted(provider, "i-up")
    answering = {"fd00::5": True, "fd00::6": False}
    addresses = {"i-up": "fd00::5", "i-hung": "fd00::6"}

    def broken() -> NoopProvider:
        raise ProviderError("the cloud API is down")

    assert provider_first_probe(addresses.get, lambda: provider, answering.__getitem__)("i-up")
    probe = provider_first_probe(addresses.get, broken, answering.__getitem__)
    assert probe("i-up") is True and probe("i-hung") is False
    # Without an address there is nothing to ask.
    assert provider_first_probe(addresses.get, broken, answering.__getitem__)("i-x") is False
