"""One router's steps with the real store and fakes at the edges (a fake provider and a fake
appliance API; the real ones are exercised end to end in tests/e2e): what each step asks of
the appliance."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from astara.drivers.metadata import MetadataService
from astara.drivers.router import RouterSnapshot
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.reconciler import (
    DRIFT_CAUSE,
    RECONCILE_CAUSE,
    LoggingStatusReporter,
    RouterReconciler,
    Settings,
)
from astara.orchestrator.state import State
from astara.orchestrator.store import Store
from astara.providers.base import Instance, InstanceSpec, PortSpec, Provider
from astara.wire.api import ServiceHealth
from astara.wire.document import ApplianceConfig
from tests.unit.test_router_driver import ROUTER_ID, recorded, snapshot_of

pytestmark = pytest.mark.unit


class FakeProvider(Provider):
    """Fake: keeps instances in a dict (the netns provider is tested for real elsewhere)."""

    name = "fake"

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}

    def boot(self, spec: InstanceSpec) -> Instance:
        booted = Instance(
            id=spec.instance_id,
            router_id=spec.router_id,
            provider=self.name,
            management_address=f"fd00::{len(self.instances) + 2}",
            state="running",
            ports=spec.ports,
        )
        self.instances[booted.id] = booted
        return booted

    def plug(self, instance: Instance, port: PortSpec) -> Instance:
        ports = (*(p for p in instance.ports if p.port_id != port.port_id), port)
        self.instances[instance.id] = instance.model_copy(update={"ports": ports})
        return self.instances[instance.id]

    def unplug(self, instance: Instance, port_id: str) -> Instance:
        ports = tuple(p for p in instance.ports if p.port_id != port_id)
        self.instances[instance.id] = instance.model_copy(update={"ports": ports})
        return self.instances[instance.id]

    def delete(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)

    def list(self) -> list[Instance]:
        return list(self.instances.values())

    def get(self, instance_id: str) -> Instance | None:
        return self.instances.get(instance_id)


class FakeAppliance:
    """Fake: the appliance API of every instance, recording each call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.generation: int | None = None
        self.config: ApplianceConfig | None = None
        self.drift = False

    def __call__(self, address: str) -> FakeAppliance:
        return self

    def __enter__(self) -> FakeAppliance:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _answer(self, call: str) -> ServiceHealth:
        self.calls.append(call)
        return ServiceHealth(generation=self.generation, uptime_s=1.0, drift=self.drift)

    def health(self) -> ServiceHealth:
        return self._answer("health")

    def put_config(self, config: ApplianceConfig) -> ServiceHealth:
        self.generation = config.generation
        self.config = config
        return self._answer("put_config")

    def reapply(self) -> ServiceHealth:
        self.drift = False
        return self._answer("reapply")


class FixedSource:
    def __init__(self, snapshot: RouterSnapshot) -> None:
        self.snapshot = snapshot

    def fetch(self, router_id: str) -> RouterSnapshot | None:
        return self.snapshot


def reconciler_for(
    store: Store,
    appliance: FakeAppliance,
    provider: FakeProvider,
    settings: Settings = Settings(management_prefixlen=64),  # noqa: B008 (frozen)
) -> RouterReconciler:
    return RouterReconciler(
        source=FixedSource(snapshot_of(recorded())),
        store=store,
        provider=provider,
        clients=appliance,  # type: ignore[arg-type]
        status=LoggingStatusReporter(),
        settings=settings,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(url)
    return Store(url)


@pytest.fixture
def parts(store: Store) -> tuple[RouterReconciler, Store, FakeAppliance]:
    appliance = FakeAppliance()
    return reconciler_for(store, appliance, FakeProvider()), store, appliance


def poll(cause: str, instance_id: str | None = None, generation: int | None = None) -> Event:
    return Event(
        ResourceType.ROUTER,
        ROUTER_ID,
        None,
        EventAction.POLL,
        cause,
        datetime.now(UTC),
        instance_id=instance_id,
        reported_generation=generation,
    )


def active(reconciler: RouterReconciler, store: Store) -> str:
    """Step until the router is ACTIVE; its instance id."""
    for _ in range(5):
        reconciler.step(ROUTER_ID, poll("test"))
        record = store.get_router(ROUTER_ID)
        if record is not None and record.state == State.ACTIVE.value:
            (instance,) = store.instances(ROUTER_ID)
            return instance.id
    raise AssertionError("never became active")


def test_periodic_poll_vouched_by_a_heartbeat_asks_the_appliance_nothing(parts) -> None:
    reconciler, store, appliance = parts
    instance_id = active(reconciler, store)
    generation = store.instances(ROUTER_ID)[0].acknowledged_generation
    appliance.calls.clear()
    reconciler.step(ROUTER_ID, poll(RECONCILE_CAUSE, instance_id, generation))
    assert appliance.calls == []
    assert store.get_router(ROUTER_ID).state == State.ACTIVE.value  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cause", "vouch"),
    [
        (RECONCILE_CAUSE, None),  # no fresh heartbeat
        (RECONCILE_CAUSE, "stale generation"),  # the heartbeat lags the store
        (RECONCILE_CAUSE, "another instance"),
        ("router.update.end", "same"),  # only the periodic poll is vouched for
    ],
)
def test_anything_short_of_a_matching_vouch_asks_the_appliance(parts, cause, vouch) -> None:
    reconciler, store, appliance = parts
    instance_id = active(reconciler, store)
    generation = store.instances(ROUTER_ID)[0].acknowledged_generation
    event = {
        None: poll(cause),
        "stale generation": poll(cause, instance_id, generation - 1),
        "another instance": poll(cause, "someone-else", generation),
        "same": poll(cause, instance_id, generation),
    }[vouch]
    appliance.calls.clear()
    reconciler.step(ROUTER_ID, event)
    assert appliance.calls == ["health"]


def test_drift_poll_checks_the_api_and_reapplies(parts) -> None:
    reconciler, store, appliance = parts
    instance_id = active(reconciler, store)
    appliance.drift = True
    appliance.calls.clear()
    reconciler.step(ROUTER_ID, poll(DRIFT_CAUSE, instance_id))
    assert appliance.calls == ["health", "reapply"]


def test_a_new_metadata_secret_re_signs_every_instance(store: Store) -> None:
    appliance, provider = FakeAppliance(), FakeProvider()

    def signatures(secret: str) -> set[str]:
        service = MetadataService("http://[fdca::1]:8775", secret)
        settings = Settings(management_prefixlen=64, metadata=service)
        active(reconciler_for(store, appliance, provider, settings), store)
        assert appliance.config is not None
        return {
            alloc.instance.signature.get_secret_value()
            for net in appliance.config.internal_networks()
            for alloc in net.allocations
            if alloc.instance is not None
        }

    before = signatures("old-secret")
    generation = appliance.generation
    after = signatures("new-secret")
    assert appliance.generation == (generation or 0) + 1
    assert before and after and not before & after
