"""One router's steps with the real store and fakes at the edges (a fake provider and a fake
appliance API; the real ones are exercised end to end in tests/e2e): what each step asks of
the appliance."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from astara.drivers.metadata import MetadataService
from astara.drivers.router import RouterSnapshot
from astara.orchestrator.appliance_client import ApplyFailed, InvalidConfig, Unreachable
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.reconciler import (
    DRIFT_CAUSE,
    RECONCILE_CAUSE,
    LoggingStatusReporter,
    RouterReconciler,
    RouterSource,
    Settings,
    StatusReporter,
    data_ports,
    failed_step,
    periodic_poll,
    replacement_cause,
)
from astara.orchestrator.state import Policy, State
from astara.orchestrator.store import Store
from astara.providers.base import Instance, InstanceSpec, PortSpec
from astara.providers.noop import NoopProvider
from astara.wire.api import Failure, ServiceHealth
from astara.wire.document import ApplianceConfig
from tests.unit.test_router_driver import ROUTER_ID, recorded, snapshot_of

pytestmark = pytest.mark.unit


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
    def __init__(self, snapshot: RouterSnapshot | None) -> None:
        self.snapshot = snapshot

    def fetch(self, router_id: str) -> RouterSnapshot | None:
        return self.snapshot


class RecordingStatus:
    """What the reconciler tells Neutron (the plugin's status API), call by call."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, State, list[str], dict[str, str]]] = []

    def report(
        self, router_id: str, state: State, port_ids: Sequence[str], firewall_groups: Any
    ) -> None:
        self.reports.append((router_id, state, list(port_ids), dict(firewall_groups)))


def reconciler_for(
    store: Store,
    appliance: FakeAppliance,
    provider: NoopProvider,
    settings: Settings = Settings(management_prefixlen=64),  # noqa: B008 (frozen)
    clock: Callable[[], float] = time.time,
    status: StatusReporter | None = None,
    source: RouterSource | None = None,
) -> RouterReconciler:
    return RouterReconciler(
        source=source or FixedSource(snapshot_of(recorded())),
        store=store,
        provider=provider,
        clients=appliance,  # type: ignore[arg-type]
        status=status or LoggingStatusReporter(),
        settings=settings,
        clock=clock,
    )


def jumping_clock(step: float = 1000.0) -> Callable[[], float]:
    """Each reading is ``step`` seconds after the last: every backoff is over at once."""
    readings = itertools.count(time.time(), step)
    return lambda: next(readings)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(url)
    return Store(url)


@pytest.fixture
def parts(store: Store) -> tuple[RouterReconciler, Store, FakeAppliance]:
    appliance = FakeAppliance()
    return reconciler_for(store, appliance, NoopProvider()), store, appliance


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


def test_an_instance_booted_before_a_crash_gets_its_address_recorded(store: Store) -> None:
    """The orchestrator died between the provider's boot and the store's record of the
    address: the instance it adopts must still be watched by heartbeats (which need it)."""
    appliance, provider = FakeAppliance(), NoopProvider()
    reconciler = reconciler_for(store, appliance, provider)
    instance_id = str(uuid.uuid4())
    # What the boot step had done when the orchestrator died: the record, the provider's boot.
    store.ensure_router(ROUTER_ID, snapshot_of(recorded()).router.project_id)
    store.add_instance(instance_id, ROUTER_ID, provider.name, instance_id)
    booted = provider.boot(InstanceSpec(instance_id=instance_id, router_id=ROUTER_ID, ports=()))
    reconciler.step(ROUTER_ID, poll("test"))
    (instance,) = store.instances(ROUTER_ID)
    assert (instance.id, instance.management_address) == (instance_id, booted.management_address)


def test_drift_poll_checks_the_api_and_reapplies(parts) -> None:
    reconciler, store, appliance = parts
    instance_id = active(reconciler, store)
    appliance.drift = True
    appliance.calls.clear()
    reconciler.step(ROUTER_ID, poll(DRIFT_CAUSE, instance_id))
    assert appliance.calls == ["health", "reapply"]


def test_a_new_metadata_secret_re_signs_every_instance(store: Store) -> None:
    appliance, provider = FakeAppliance(), NoopProvider()

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


QUICK_TO_ERROR = Settings(management_prefixlen=64, policy=Policy(max_failures=3))


def test_a_boot_the_cloud_refuses_ends_in_error_with_the_clouds_reason(store: Store) -> None:
    provider = NoopProvider()
    provider.fail_boot("Quota exceeded for instances: Requested 1, but already used 10 of 10")
    reconciler = reconciler_for(store, FakeAppliance(), provider, QUICK_TO_ERROR, jumping_clock())
    for _ in range(10):
        reconciler.step(ROUTER_ID, poll("test"))
    record = store.get_router(ROUTER_ID)
    assert record is not None
    assert record.state == State.ERROR.value
    assert record.last_error is not None and "Quota exceeded for instances" in record.last_error
    # Each refused boot left nothing behind: no instance to adopt, none to delete.
    assert store.instances(ROUTER_ID) == []
    assert provider.instances == {}
    assert any("boot failed" in event.message for event in store.events(ROUTER_ID))


def test_an_instance_the_cloud_failed_is_replaced_and_counts_towards_error(store: Store) -> None:
    provider = NoopProvider()
    reconciler = reconciler_for(store, FakeAppliance(), provider, QUICK_TO_ERROR, jumping_clock())
    reconciler.step(ROUTER_ID, poll("test"))
    (first,) = store.instances(ROUTER_ID)
    provider.fail_instance(first.id, "No valid host was found. There are not enough hosts.")
    reconciler.step(ROUTER_ID, poll("test"))
    record = store.get_router(ROUTER_ID)
    assert record is not None and record.error_count == 1
    assert record.last_error is not None and "No valid host was found" in record.last_error
    assert [i.id for i in store.instances(ROUTER_ID)][-1] != first.id  # a replacement booted
    # Every replacement fails too: ERROR, with the cloud's reason.
    for _ in range(10):
        newest = store.instances(ROUTER_ID)[-1].id
        if newest in provider.instances and provider.instances[newest].state != "failed":
            provider.fail_instance(newest, "Port binding failed for port x")
        reconciler.step(ROUTER_ID, poll("test"))
    record = store.get_router(ROUTER_ID)
    assert record is not None and record.state == State.ERROR.value
    assert record.last_error is not None and "Port binding failed" in record.last_error


class RewiringProvider(NoopProvider):
    """Serves every router port through a NIC of its own, as the Nova provider does."""

    @staticmethod
    def nic_mac(port: PortSpec) -> str:
        return "02:00:00:00:00:" + port.port_id[-2:].encode().hex()[-2:]

    def plug(self, instance: Instance, port: PortSpec) -> Instance:
        return super().plug(instance, port.model_copy(update={"mac": self.nic_mac(port)}))


def test_the_document_names_the_nics_the_provider_wired(store: Store) -> None:
    appliance, provider = FakeAppliance(), RewiringProvider()
    reconciler = reconciler_for(store, appliance, provider)
    snapshot = snapshot_of(recorded())
    router_ports = [p for p in snapshot.interface_ports]
    # Booted without data ports (as a replacement is): every router port is plugged later.
    reconciler.step(ROUTER_ID, poll("test"))
    (instance,) = store.instances(ROUTER_ID)
    provider.instances[instance.id] = provider.instances[instance.id].model_copy(
        update={"ports": provider.instances[instance.id].ports[:1]}
    )
    active(reconciler, store)
    assert appliance.config is not None
    macs = {iface.mac for iface in appliance.config.interfaces}
    wired = {RewiringProvider.nic_mac(p) for p in provider.instances[instance.id].ports[1:]}
    assert wired and wired <= macs
    assert not {p.mac_address for p in router_ports} & macs
    internal = appliance.config.internal_networks()
    assert internal and all(net.interface_mac in wired for net in internal)


class HealthView:
    """What the health loop would say: silent routers, and what heartbeats vouch for."""

    def __init__(self, silent: set[str], vouched: dict[str, tuple[str, int]]) -> None:
        self.silent, self.vouched = silent, vouched

    def awaiting_verdict(self, router_id: str) -> bool:
        return router_id in self.silent

    def vouch(self, router_id: str) -> tuple[str, int] | None:
        return self.vouched.get(router_id)


def test_the_periodic_poll_leaves_a_silent_appliance_to_the_health_loop() -> None:
    health = HealthView({"r-silent"}, {"r-beating": ("i-1", 4)})
    now = datetime.now(UTC)
    assert periodic_poll("r-silent", "p", health, now) is None
    beating = periodic_poll("r-beating", "p", health, now)
    assert beating is not None
    assert (
        beating.resource_id,
        beating.cause,
        beating.instance_id,
        beating.reported_generation,
    ) == (
        "r-beating",
        RECONCILE_CAUSE,
        "i-1",
        4,
    )
    unknown = periodic_poll("r-new", None, health, now)
    assert unknown is not None and (unknown.instance_id, unknown.reported_generation) == (
        None,
        None,
    )


def test_neutron_hears_each_state_change_once_with_every_router_port(store: Store) -> None:
    status = RecordingStatus()
    reconciler = reconciler_for(store, FakeAppliance(), NoopProvider(), status=status)
    active(reconciler, store)
    snapshot = snapshot_of(recorded())
    ports = sorted([p.id for p in snapshot.interface_ports] + [snapshot.gateway_port.id])  # type: ignore[union-attr]
    states = [state for _, state, _, _ in status.reports]
    assert states[-1] is State.ACTIVE and State.BOOTING in states
    assert all(sorted(p) == ports and r == ROUTER_ID for r, _, p, _ in status.reports)
    written = len(status.reports)
    reconciler.step(ROUTER_ID, poll("test"))  # nothing changed: nothing to tell
    assert len(status.reports) == written


def test_a_firewall_group_neutron_shows_pending_is_written_even_when_nothing_else_changed(
    store: Store,
) -> None:
    from tests.unit.test_firewall_driver import BACKEND, fw_group, snapshot_with

    pending = snapshot_with([fw_group("g1", [BACKEND])])
    source = FixedSource(pending)
    status = RecordingStatus()
    reconciler = reconciler_for(
        store, FakeAppliance(), NoopProvider(), status=status, source=source
    )
    active(reconciler, store)
    assert status.reports[-1][3] == {"g1": "ACTIVE"}
    written = len(status.reports)
    reconciler.step(ROUTER_ID, poll("test"))  # Neutron still shows it pending: say it again
    assert len(status.reports) == written + 1
    source.snapshot = snapshot_with([fw_group("g1", [BACKEND], status="ACTIVE")])
    reconciler.step(ROUTER_ID, poll("test"))
    assert len(status.reports) == written + 1


def test_data_ports_mark_the_gateway_external_and_clamp_the_network_mtu() -> None:
    snapshot = snapshot_of(recorded())
    networks = [n.model_copy(update={"mtu": 100_000}) for n in snapshot.networks]
    ports = data_ports(snapshot.model_copy(update={"networks": networks}))
    kinds = {p.port_id: p.kind for p in ports}
    assert kinds.pop(snapshot.gateway_port.id) == "external"  # type: ignore[union-attr]
    assert set(kinds.values()) == {"internal"}
    assert {p.mtu for p in ports} == {9216}
    no_gateway = snapshot.model_copy(update={"gateway_port": None})
    assert {p.kind for p in data_ports(no_gateway)} == {"internal"}


def test_replacement_and_failure_labels_name_the_cause() -> None:
    record = FrozenRecord(rebuild_requested=True)
    assert replacement_cause(record, None) == "rebuild"  # type: ignore[arg-type]
    never = FrozenRecord(ever_reachable=False)
    answered = FrozenRecord(ever_reachable=True)
    plain = FrozenRecord(rebuild_requested=False)
    assert replacement_cause(plain, never) == "boot_timeout"  # type: ignore[arg-type]
    assert replacement_cause(plain, answered) == "unreachable"  # type: ignore[arg-type]
    assert replacement_cause(plain, None) == "unreachable"  # type: ignore[arg-type]
    assert failed_step(ApplyFailed(Failure(step="firewall", detail="x"))) == "firewall"
    assert failed_step(Unreachable("x")) == "unreachable"
    assert failed_step(InvalidConfig([])) == "rejected"
    assert failed_step(RuntimeError("plug")) == "plug"
    assert failed_step(ValueError("other")) == "appliance"


class FrozenRecord:
    """The fields of a router or instance record the labels read."""

    def __init__(self, rebuild_requested: bool = False, ever_reachable: bool = True) -> None:
        self.rebuild_requested = rebuild_requested
        self.ever_reachable = ever_reachable


def test_a_router_gone_from_neutron_loses_its_instance_then_its_record(store: Store) -> None:
    provider = NoopProvider()
    source = FixedSource(snapshot_of(recorded()))
    reconciler = reconciler_for(store, FakeAppliance(), provider, source=source)
    instance_id = active(reconciler, store)
    source.snapshot = None  # the router deleted in Neutron
    reconciler.step(ROUTER_ID, poll("router.delete.end"))
    assert provider.deleted == [instance_id] and provider.list() == []
    assert store.get_router(ROUTER_ID) is not None  # the instance first, then the record
    reconciler.step(ROUTER_ID, poll("router.delete.end"))
    assert store.get_router(ROUTER_ID) is None
    # A router never known and already gone: nothing is recorded, nothing to come back for.
    assert reconciler.step("never-seen", poll("router.delete.end")) is None
    assert store.get_router("never-seen") is None


def test_an_instance_gone_behind_astaras_back_is_replaced(store: Store) -> None:
    provider = NoopProvider()
    reconciler = reconciler_for(store, FakeAppliance(), provider)
    first = active(reconciler, store)
    provider.delete(first)  # the provider no longer has it (a Nova server deleted by hand)
    replacement = active(reconciler, store)
    assert replacement != first
    assert [i.id for i in store.instances(ROUTER_ID)] == [replacement]


def test_an_open_breaker_holds_a_replacement_back(store: Store) -> None:
    provider = NoopProvider()
    allowed = [True]
    reconciler = RouterReconciler(
        source=FixedSource(snapshot_of(recorded())),
        store=store,
        provider=provider,
        clients=FakeAppliance(),  # type: ignore[arg-type]
        status=LoggingStatusReporter(),
        settings=Settings(management_prefixlen=64),
        replacement_allowed=lambda: allowed[0],
    )
    first = active(reconciler, store)
    allowed[0] = False
    provider.delete(first)
    for _ in range(3):
        reconciler.step(ROUTER_ID, poll("test"))
    assert provider.list() == []  # no replacement booted while the breaker is open
    allowed[0] = True
    assert active(reconciler, store) != first
