"""What operators' flags and requests do to a router's steps, and what the steps report.

The real reconciler and store, with the fake provider and appliance of test_reconciler.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from astara.orchestrator.appliance_client import ApplyFailed
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.reconciler import (
    HEALTH_CAUSE,
    LoggingStatusReporter,
    RouterReconciler,
    Settings,
)
from astara.orchestrator.state import State
from astara.orchestrator.store import Store
from astara.providers.base import Instance, InstanceSpec
from astara.providers.noop import NoopProvider
from astara.wire.api import Failure, ServiceHealth
from astara.wire.document import ApplianceConfig
from tests.unit.test_reconciler import FakeAppliance, FixedSource, active, poll
from tests.unit.test_router_driver import ROUTER_ID, recorded, snapshot_of

pytestmark = pytest.mark.unit


class RecordingTelemetry:
    def __init__(self) -> None:
        self.facts: list[tuple[str, tuple[object, ...]]] = []

    def replaced(self, cause: str) -> None:
        self.facts.append(("replaced", (cause,)))

    def apply_failed(self, step: str) -> None:
        self.facts.append(("apply_failed", (step,)))

    def configured(self, action: str, seconds: float) -> None:
        self.facts.append(("configured", (action, seconds)))

    def neutron_call(self, operation: str, seconds: float, failed: bool) -> None:
        self.facts.append(("neutron_call", (operation, failed)))

    def named(self, name: str) -> list[tuple[object, ...]]:
        return [args for fact, args in self.facts if fact == name]


class SpecProvider(NoopProvider):
    """The fake provider, keeping the specs it was asked to boot."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[InstanceSpec] = []

    def boot(self, spec: InstanceSpec) -> Instance:
        self.specs.append(spec)
        return super().boot(spec)


class FailingAppliance(FakeAppliance):
    def put_config(self, config: ApplianceConfig) -> ServiceHealth:
        self.calls.append("put_config")
        raise ApplyFailed(Failure(step="nftables", detail="boom"))


class Parts:
    def __init__(self, tmp_path: Path, appliance: FakeAppliance | None = None) -> None:
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        upgrade(url)
        self.store = Store(url)
        self.provider = SpecProvider()
        self.appliance = appliance or FakeAppliance()
        self.telemetry = RecordingTelemetry()
        self.source = FixedSource(snapshot_of(recorded()))
        self.reconciler = RouterReconciler(
            source=self.source,
            store=self.store,
            provider=self.provider,
            clients=self.appliance,  # type: ignore[arg-type]
            status=LoggingStatusReporter(),
            settings=Settings(management_prefixlen=64),
            telemetry=self.telemetry,
        )


def event(action: EventAction, cause: str, received_at: datetime | None = None) -> Event:
    at = received_at or datetime.now(UTC)
    return Event(ResourceType.ROUTER, ROUTER_ID, None, action, cause, at)


def test_an_unmanaged_router_is_left_alone_even_when_its_instance_died(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    instance_id = active(parts.reconciler, parts.store)
    parts.store.set_managed(ROUTER_ID, False)
    parts.appliance.calls.clear()
    parts.reconciler.step(ROUTER_ID, poll("operator"))
    assert parts.appliance.calls == []  # not even asked how it is
    parts.provider.instances.clear()  # the instance is gone (killed)
    for cause in (HEALTH_CAUSE, "operator", "router.update.end"):
        parts.reconciler.step(ROUTER_ID, poll(cause, instance_id))
    assert parts.appliance.calls == []
    assert parts.provider.instances == {}  # nothing booted to replace it
    assert [i.id for i in parts.store.instances(ROUTER_ID)] == [instance_id]
    assert parts.store.get_router(ROUTER_ID).state == State.UNMANAGED.value  # type: ignore[union-attr]
    assert parts.telemetry.named("replaced") == []
    parts.store.set_managed(ROUTER_ID, True)
    parts.reconciler.step(ROUTER_ID, poll("operator"))
    assert parts.telemetry.named("replaced") == [("unreachable",)]
    assert len(parts.provider.instances) == 1


def test_a_rebuild_boots_with_the_operators_image_and_flavor(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    old = active(parts.reconciler, parts.store)
    parts.store.set_boot_overrides(ROUTER_ID, "appliance-v2", "m1.router")
    parts.reconciler.step(ROUTER_ID, event(EventAction.REBUILD, "operator"))
    assert (parts.provider.specs[-1].image, parts.provider.specs[-1].flavor) == (
        "appliance-v2",
        "m1.router",
    )
    assert parts.telemetry.named("replaced") == [("rebuild",)]
    new = active(parts.reconciler, parts.store)
    assert new != old
    assert old not in parts.provider.instances


def test_a_neutron_change_reports_its_time_to_configured_once(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    arrived = datetime.now(UTC) - timedelta(seconds=2)
    parts.reconciler.step(ROUTER_ID, event(EventAction.CREATE, "router.create.end", arrived))
    assert parts.telemetry.named("configured") == []  # booting, not configured yet
    active(parts.reconciler, parts.store)
    ((action, seconds),) = parts.telemetry.named("configured")
    assert action == "create"
    assert 2.0 <= float(seconds) < 10.0  # type: ignore[arg-type]


def test_a_failed_push_reports_its_step(tmp_path: Path) -> None:
    parts = Parts(tmp_path, FailingAppliance())
    for _ in range(3):
        parts.reconciler.step(ROUTER_ID, poll("test"))
    assert parts.telemetry.named("apply_failed")[0] == ("nftables",)


def test_neutron_calls_are_timed_and_failures_counted(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    parts.reconciler.step(ROUTER_ID, poll("test"))
    assert ("fetch_router", False) in parts.telemetry.named("neutron_call")

    def broken(router_id: str) -> None:
        raise RuntimeError("Neutron is down")

    parts.source.fetch = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        parts.reconciler.step(ROUTER_ID, poll("test"))
    assert parts.telemetry.named("neutron_call")[-1] == ("fetch_router", True)


def test_a_debugged_router_traces_its_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = Parts(tmp_path)
    parts.store.ensure_router(ROUTER_ID, "p")
    parts.store.set_debug(ROUTER_ID, True)
    with caplog.at_level(logging.INFO, logger="astara.orchestrator.reconciler"):
        parts.reconciler.step(ROUTER_ID, poll("test"))
    traced = [r.getMessage() for r in caplog.records if ": debug: " in r.getMessage()]
    assert len(traced) == 1 and "Action.BOOT" in traced[0] and "Observation(" in traced[0]
    assert [e.message for e in parts.store.events(ROUTER_ID)][-1] == "debug: boot (no instance)"
