"""The router state machine decides the next step from what it observes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from astara.orchestrator.state import (
    Action,
    InstanceView,
    Observation,
    Policy,
    State,
    backoff_delay,
    decide,
)

pytestmark = pytest.mark.unit

POLICY = Policy(boot_timeout=60, backoff_base=1, backoff_cap=8, max_failures=5)
HEALTHY = InstanceView(booted_at=0, reachable=True, ever_reachable=True, applied_generation=4)
BASE = Observation(
    now=100.0,
    managed=True,
    router_exists=True,
    desired_generation=4,
    instance=HEALTHY,
    failures=0,
    last_failure_at=None,
    error_generation=None,
)


def step(**changes: object) -> tuple[Action, State]:
    decision = decide(replace(BASE, **changes), POLICY)  # type: ignore[arg-type]
    return decision.action, decision.state


def test_configured_instance_is_left_alone() -> None:
    assert step() == (Action.NOTHING, State.ACTIVE)


def test_a_new_router_gets_an_instance() -> None:
    assert step(instance=None) == (Action.BOOT, State.BOOTING)


def test_a_changed_router_gets_its_document_pushed() -> None:
    assert step(desired_generation=5) == (Action.PUSH_CONFIG, State.CONFIGURING)


def test_boot_is_awaited_then_times_out() -> None:
    booting = InstanceView(
        booted_at=90, reachable=False, ever_reachable=False, applied_generation=None
    )
    waiting = decide(replace(BASE, instance=booting), POLICY)
    assert (waiting.action, waiting.state) == (Action.NOTHING, State.BOOTING)
    assert waiting.retry_at is not None and waiting.retry_at > BASE.now
    late = replace(booting, booted_at=BASE.now - 61)
    assert step(instance=late) == (Action.REPLACE, State.BOOTING)


def test_an_instance_that_stops_answering_is_replaced() -> None:
    dead = replace(HEALTHY, reachable=False)
    assert step(instance=dead) == (Action.REPLACE, State.BOOTING)


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_delay(n, POLICY) for n in range(6)] == [0, 1, 2, 4, 8, 8]
    waiting = decide(replace(BASE, failures=3, last_failure_at=99.0, desired_generation=5), POLICY)
    assert (waiting.action, waiting.state, waiting.retry_at) == (
        Action.NOTHING,
        State.BACKOFF,
        103.0,
    )
    later = decide(replace(BASE, failures=3, last_failure_at=90.0, desired_generation=5), POLICY)
    assert later.action is Action.PUSH_CONFIG


def test_too_many_failures_mean_error_until_a_change_or_rebuild() -> None:
    assert step(failures=5, last_failure_at=0.0) == (Action.MARK_ERROR, State.ERROR)
    assert step(failures=5, error_generation=4) == (Action.NOTHING, State.ERROR)
    # A later change in Neutron leaves ERROR and tries again from scratch.
    assert step(failures=5, error_generation=4, desired_generation=5) == (
        Action.PUSH_CONFIG,
        State.CONFIGURING,
    )
    assert step(failures=5, error_generation=4, rebuild_requested=True) == (
        Action.REPLACE,
        State.BOOTING,
    )


def test_deleted_router_loses_its_instance_then_is_forgotten() -> None:
    assert step(router_exists=False) == (Action.DELETE_INSTANCE, State.DELETING)
    assert step(router_exists=False, instance=None) == (Action.FORGET, State.DELETED)
    # Deleting wins over ERROR and backoff: nothing may leak.
    assert step(router_exists=False, error_generation=4, failures=9) == (
        Action.DELETE_INSTANCE,
        State.DELETING,
    )


def test_unmanaged_router_is_not_touched() -> None:
    assert step(managed=False, instance=None) == (Action.NOTHING, State.UNMANAGED)


def test_an_instance_its_provider_failed_is_replaced_as_a_failure() -> None:
    failed = replace(HEALTHY, failed=True)
    decision = decide(replace(BASE, instance=failed), POLICY)
    assert (decision.action, decision.state, decision.failure) == (
        Action.REPLACE,
        State.BOOTING,
        True,
    )
    # Other decisions are no failures.
    assert not decide(replace(BASE, instance=None), POLICY).failure
    assert not decide(replace(BASE, desired_generation=5), POLICY).failure


def test_a_failure_time_left_from_before_a_success_is_no_backoff() -> None:
    assert step(instance=None, failures=0, last_failure_at=BASE.now) == (
        Action.BOOT,
        State.BOOTING,
    )


def test_the_default_policy_gives_up_after_five_consecutive_failures() -> None:
    failing = replace(BASE, instance=None, last_failure_at=0.0)
    assert decide(replace(failing, failures=4), Policy()).state is not State.ERROR
    assert decide(replace(failing, failures=5), Policy()).action is Action.MARK_ERROR
