"""The replacement circuit breaker, driven by a fake clock."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from astara.orchestrator.breaker import CircuitBreaker, over_threshold
from tests.unit.clock import FakeClock

pytestmark = pytest.mark.unit


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def breaker(registry: CollectorRegistry, clock: FakeClock) -> CircuitBreaker:
    # 20 % of 20 instances: a fifth death within a minute opens it.
    return CircuitBreaker(registry, clock, window=60, max_dead_share=0.2, min_deaths=3)


def gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("astara_replacement_breaker_open")


def dead(n: int, prefix: str = "i") -> list[str]:
    return [f"{prefix}{k}" for k in range(n)]


@pytest.mark.parametrize(
    ("deaths", "managed", "tripped"),
    [(4, 20, False), (5, 20, True), (2, 3, False), (3, 3, True), (3, 100, False)],
)
def test_over_threshold(deaths: int, managed: int, tripped: bool) -> None:
    assert over_threshold(deaths, managed, 0.2, 3) is tripped


def test_a_few_deaths_are_replaced(breaker: CircuitBreaker, registry: CollectorRegistry) -> None:
    for _ in range(10):  # the same dead instances reported on every tick count once
        breaker.observe(20, dead(4))
    assert breaker.allow_replacement()
    assert breaker.status == "closed"
    assert gauge(registry) == 0


def test_mass_death_opens_with_an_alarm(
    breaker: CircuitBreaker,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="astara.orchestrator.breaker"):
        breaker.observe(20, dead(5))
    assert not breaker.allow_replacement()
    assert gauge(registry) == 1
    assert breaker.status == "open: 5 of 20 instances died within 60 s (limit 20%)"
    assert "circuit breaker open" in caplog.text


def test_deaths_already_replaced_still_count_in_the_window(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for name in dead(5):
        breaker.observe(20, [name])  # each replaced before the next tick
        clock.now += 10
    assert not breaker.allow_replacement()


def test_deaths_spread_beyond_the_window_do_not_open(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for name in dead(10):
        breaker.observe(20, [name])
        clock.now += 20  # never more than three deaths in any minute
    assert breaker.allow_replacement()


def test_health_returns_closes_it(
    breaker: CircuitBreaker, clock: FakeClock, registry: CollectorRegistry
) -> None:
    breaker.observe(20, dead(6))  # a partition: six fall silent
    clock.now += 120
    breaker.observe(20, dead(6))
    assert not breaker.allow_replacement()  # the deaths aged out but they are still dead
    breaker.observe(20, dead(2))  # the partition heals; two really died
    assert breaker.allow_replacement()
    assert gauge(registry) == 0
    breaker.observe(20, dead(2))
    breaker.observe(20, [*dead(2), "j"])  # one more death is not a new storm
    assert breaker.allow_replacement()


def test_no_closing_while_deaths_keep_coming(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.observe(20, dead(5))
    clock.now += 30
    breaker.observe(20, dead(3, prefix="new"))  # few dead right now, many within the window
    assert not breaker.allow_replacement()


def test_operator_clear_resumes_and_forgives_what_died(
    breaker: CircuitBreaker,
    clock: FakeClock,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker.observe(20, dead(8))
    breaker.clear(operator="alice")
    assert breaker.allow_replacement()
    assert gauge(registry) == 0
    assert "cleared by alice" in caplog.text
    clock.now += 1
    breaker.observe(20, dead(8))  # still dead, being replaced now: no re-open
    assert breaker.allow_replacement()
    breaker.observe(20, [*dead(8), *dead(5, prefix="x")])  # a fresh storm opens it again
    assert not breaker.allow_replacement()


def test_share_must_be_a_fraction(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(registry, max_dead_share=1.5)
