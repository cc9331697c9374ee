"""One step of one router: observe, decide (state.decide), act, record.

Everything a step needs is re-read each time (Neutron, the store, the provider, the appliance),
so a step interrupted by a crash is simply run again after a restart. Every action is
idempotent; the only memory between steps is the store. The one shortcut: the periodic poll
of a router whose appliance's fresh heartbeat reports the acknowledged generation and no
drift takes the heartbeat's word instead of calling the appliance's API.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_interface
from typing import Protocol, TypeVar

from pydantic import ValidationError

from astara.drivers.metadata import MetadataService
from astara.drivers.router import (
    DEFAULT_SERVICES,
    ManagementPort,
    RouterSnapshot,
    ServiceSettings,
    firewall_group_statuses,
    plugged_ports,
    render,
    validation_summary,
)
from astara.orchestrator.appliance_client import (
    ApplianceClient,
    ApplianceError,
    ApplyFailed,
    InvalidConfig,
    StaleGeneration,
    Unreachable,
)
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.neutron_status import group_statuses
from astara.orchestrator.state import (
    Action,
    Decision,
    InstanceView,
    Observation,
    Policy,
    State,
    decide,
)
from astara.orchestrator.store import InstanceRecord, RouterRecord, Store
from astara.orchestrator.telemetry import NoTelemetry, Telemetry
from astara.providers.base import Instance, InstanceSpec, PortSpec, Provider, ProviderError
from astara.wire.document import ApplianceConfig

LOG = logging.getLogger(__name__)

MANAGEMENT_NETWORK = "management"
HEALTH_CAUSE = "health"  # the cause of the polls the health loop sends for dead instances
DRIFT_CAUSE = "drift"  # ...and for instances whose heartbeat says their live state drifted
RECONCILE_CAUSE = "reconcile"  # the periodic poll of every router


class RenderFailed(Exception):
    """The document cannot be rendered from what Neutron says: the same data fails again, so
    the router goes to ERROR at once instead of retrying."""


class RouterSource(Protocol):
    def fetch(self, router_id: str) -> RouterSnapshot | None: ...


class StatusReporter(Protocol):
    """Tells Neutron how a router (and its interface and gateway ports) is doing."""

    def report(
        self,
        router_id: str,
        state: State,
        port_ids: Sequence[str],
        firewall_groups: Mapping[str, str],
    ) -> None:
        """``firewall_groups``: what the router's document made of each firewall group on
        its interfaces (ACTIVE, ERROR, DOWN)."""


class LoggingStatusReporter:
    """Without the Astara plugin's status API (``[neutron] write_status`` off): a log line."""

    def report(
        self,
        router_id: str,
        state: State,
        port_ids: Sequence[str],
        firewall_groups: Mapping[str, str],
    ) -> None:
        LOG.info("router %s: status %s", router_id, state)


ClientFactory = Callable[[str], ApplianceClient]
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    management_prefixlen: int
    metadata: MetadataService | None = None
    services: ServiceSettings = field(default_factory=ServiceSettings)
    policy: Policy = field(default_factory=Policy)


def snapshot_digest(
    snapshot: RouterSnapshot,
    metadata: MetadataService | None = None,
    services: ServiceSettings = DEFAULT_SERVICES,
) -> str:
    """Changes exactly when what the document is rendered from changes: what Neutron says
    about the router, the metadata service (a new secret re-signs every instance) and the
    operator's DHCP and DNS settings."""
    rendered_from = snapshot.model_dump_json() + (metadata.fingerprint() if metadata else "")
    rendered_from += repr(services)
    return hashlib.sha256(rendered_from.encode()).hexdigest()


def _groups_stale(snapshot: RouterSnapshot, state: State, rendered: Mapping[str, str]) -> bool:
    """Whether Neutron shows a firewall group of the router otherwise than it should now (a
    group changed without changing the document still waits for its status)."""
    shown = {group.id: group.status for group in snapshot.firewall_groups}
    return any(shown.get(gid) != status for gid, status in group_statuses(state, rendered).items())


def management_mac(instance_id: str) -> str:
    """A locally administered unicast MAC derived from the instance id (stable, unique enough)."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def instance_spec(
    instance_id: str,
    snapshot: RouterSnapshot,
    with_data_ports: bool = True,
    image: str | None = None,
    flavor: str | None = None,
) -> InstanceSpec:
    """A replacement boots with its management port only: it gets the data ports on takeover.
    ``image``, ``flavor``: an operator's choice instead of the configured ones."""
    management = PortSpec(
        port_id=f"mgmt-{instance_id[:8]}",
        network_id=MANAGEMENT_NETWORK,
        mac=management_mac(instance_id),
        kind="management",
    )
    return InstanceSpec(
        instance_id=instance_id,
        router_id=snapshot.router.id,
        ports=(management, *(data_ports(snapshot) if with_data_ports else ())),
        image=image,
        flavor=flavor,
    )


def data_ports(snapshot: RouterSnapshot) -> list[PortSpec]:
    mtus = {net.id: net.mtu for net in snapshot.networks}
    gateway = snapshot.gateway_port
    return [
        PortSpec(
            port_id=port.id,
            network_id=port.network_id,
            mac=port.mac_address,
            kind="external" if gateway is not None and port.id == gateway.id else "internal",
            mtu=min(max(mtus.get(port.network_id) or 1500, 1280), 9216),
        )
        for port in plugged_ports(snapshot)
    ]


def replacement_cause(record: RouterRecord, instance: InstanceRecord | None) -> str:
    """The metric label of why an instance is replaced (a small, fixed set)."""
    if record.rebuild_requested:
        return "rebuild"
    if instance is not None and not instance.ever_reachable:
        return "boot_timeout"
    return "unreachable"


class Vouching(Protocol):
    """What the health loop knows of a router's appliance (``HealthLoop``)."""

    def awaiting_verdict(self, router_id: str) -> bool: ...

    def vouch(self, router_id: str) -> tuple[str, int] | None: ...


def periodic_poll(
    router_id: str, project_id: str | None, health: Vouching, now: datetime
) -> Event | None:
    """The periodic reconcile's event for one router, carrying what its latest heartbeat
    vouches for (instance, generation) so the reconciler can skip asking the appliance; None
    while the appliance is silent and awaits the health loop's verdict: a poll would wait on a
    frozen appliance's API and hold up its replacement."""
    if health.awaiting_verdict(router_id):
        return None
    instance_id, generation = health.vouch(router_id) or (None, None)
    return Event(
        ResourceType.ROUTER,
        router_id,
        project_id,
        EventAction.POLL,
        RECONCILE_CAUSE,
        now,
        instance_id=instance_id,
        reported_generation=generation,
    )


def failed_step(exc: Exception) -> str:
    """The metric label of where a configuration push failed."""
    if isinstance(exc, ApplyFailed):
        return exc.step
    if isinstance(exc, InvalidConfig):
        return "rejected"
    if isinstance(exc, Unreachable):
        return "unreachable"
    return "plug" if isinstance(exc, RuntimeError) else "appliance"


class RouterReconciler:
    def __init__(
        self,
        source: RouterSource,
        store: Store,
        provider: Provider,
        clients: ClientFactory,
        status: StatusReporter,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        replacement_allowed: Callable[[], bool] = lambda: True,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._source = source
        self._store = store
        self._provider = provider
        self._clients = clients
        self._status = status
        self._settings = settings
        self._clock = clock
        self._replacement_allowed = replacement_allowed
        self._telemetry = telemetry or NoTelemetry()
        # router id -> (action, arrival) of the oldest Neutron change not configured yet
        self._unconfigured: dict[str, tuple[str, datetime]] = {}

    def step(self, router_id: str, event: Event | None) -> float | None:
        """Run one step; return the monotonic time to run again, or None."""
        snapshot = self._timed("fetch_router", lambda: self._source.fetch(router_id))
        record = self._store.get_router(router_id)
        if record is None:
            if snapshot is None:
                return None  # never known, already gone
            record = self._store.ensure_router(router_id, snapshot.router.project_id)
        if event is not None and event.action is EventAction.REBUILD:
            self._store.request_rebuild(router_id, True)
        known = (record.state, record.desired_generation)
        if snapshot is not None:
            digest = snapshot_digest(snapshot, self._settings.metadata, self._settings.services)
            record = self._store.set_desired(router_id, digest)

        instances = self._store.instances(router_id)
        instance = instances[-1] if instances else None
        retiring = instances[:-1]  # older ones: being replaced by the newest
        # The health loop already found this very instance silent and its probe failing: trust
        # it rather than wait for another probe to time out (a late report about an instance
        # already replaced is not about the newest one, and is ignored).
        found_dead = (
            event is not None
            and event.cause == HEALTH_CAUSE
            and instance is not None
            and event.instance_id == instance.id
        )
        # A periodic poll of an instance whose fresh heartbeat reports the generation it last
        # acknowledged, without drift: nothing to ask its API (at 100 routers, these calls
        # were a third of the orchestrator's idle CPU).
        vouched = (
            event is not None
            and event.cause == RECONCILE_CAUSE
            and instance is not None
            and event.instance_id == instance.id
            and event.reported_generation == instance.acknowledged_generation
        )
        if event is not None and event.action in (EventAction.CREATE, EventAction.UPDATE):
            self._unconfigured.setdefault(router_id, (event.action.value, event.received_at))
        # An unmanaged router is left alone: its instance is not even asked how it is.
        view, provided, drifted = (
            self._observe(instance, found_dead, vouched) if record.managed else (None, None, False)
        )
        now = self._clock()
        observation = self._observation(record, snapshot, view, now)
        decision = decide(observation, self._settings.policy)
        if record.debug:
            LOG.info("router %s: debug: %s -> %s", router_id, observation, decision)
            if decision.action is not Action.NOTHING:
                self._store.log(f"debug: {decision.action} ({decision.reason})", router_id)
        if decision.state.value != record.state:
            LOG.info(
                "router %s: %s -> %s (%s)", router_id, record.state, decision.state, decision.reason
            )
        retry = self._act(decision, record, snapshot, instance, provided, retiring)
        if decision.state is State.ACTIVE:
            self._configured(router_id)
            # A replacement that took over: what it replaced can go (also after a crash).
            for old in retiring:
                self._delete_instance(old)
            if drifted and provided is not None:
                self._repair_drift(router_id, provided)
        if decision.action is not Action.FORGET and decision.state.value != record.state:
            self._store.set_state(router_id, decision.state)
        groups = firewall_group_statuses(snapshot) if snapshot is not None else {}
        if snapshot is not None and (
            known != (decision.state.value, record.desired_generation)
            or _groups_stale(snapshot, decision.state, groups)
        ):
            ports = [p.id for p in snapshot.interface_ports]
            if snapshot.gateway_port is not None:
                ports.append(snapshot.gateway_port.id)
            self._timed(
                "write_status",
                lambda: self._status.report(router_id, decision.state, ports, groups),
            )
        if decision.action is Action.FORGET:
            self._unconfigured.pop(router_id, None)
        if retry is None and decision.retry_at is not None:
            retry = decision.retry_at - now
        return None if retry is None else time.monotonic() + retry

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        """A call to Neutron, timed for the metrics."""
        started = time.monotonic()
        failed = True
        try:
            result = call()
            failed = False
            return result
        finally:
            self._telemetry.neutron_call(operation, time.monotonic() - started, failed)

    def _configured(self, router_id: str) -> None:
        pending = self._unconfigured.pop(router_id, None)
        if pending is not None:
            action, arrived = pending
            self._telemetry.configured(action, (datetime.now(UTC) - arrived).total_seconds())

    # -- observe -----------------------------------------------------------------------

    def _observe(
        self, instance: InstanceRecord | None, found_dead: bool = False, vouched: bool = False
    ) -> tuple[InstanceView | None, Instance | None, bool]:
        """The instance as seen now, and whether its running state drifted from its document."""
        if instance is None:
            return None, None, False
        booted_at = instance.created_at.replace(tzinfo=UTC).timestamp()
        provided = self._provider.get(instance.id)
        if provided is not None and provided.state == "failed":
            return InstanceView(booted_at, False, False, None, failed=True), provided, False
        if provided is None or provided.state == "missing" or found_dead:
            return InstanceView(booted_at, False, True, None), provided, False
        if vouched and instance.ever_reachable:
            view = InstanceView(booted_at, True, True, instance.acknowledged_generation)
            return view, provided, False
        try:
            with self._clients(provided.management_address) as client:
                health = client.health()
        except ApplianceError as exc:
            LOG.debug("instance %s: no answer (%s)", instance.id, exc)
            return InstanceView(booted_at, False, instance.ever_reachable, None), provided, False
        if not instance.ever_reachable:
            self._store.update_instance(instance.id, ever_reachable=True, health="up")
        if instance.management_address != provided.management_address:
            # A crash between the provider's boot and its record left the store without the
            # address, and the health loop watches only instances that have one.
            self._store.update_instance(instance.id, management_address=provided.management_address)
        view = InstanceView(booted_at, True, True, health.generation)
        return view, provided, bool(health.drift)

    def _repair_drift(self, router_id: str, provided: Instance) -> None:
        """Changed behind Astara's back (a rule flushed in the appliance): apply it all again."""
        LOG.warning(
            "router %s: instance %s drifted from its document; re-applying", router_id, provided.id
        )
        self._store.log("running state drifted; re-applied", router_id, provided.id)
        try:
            with self._clients(provided.management_address) as client:
                client.reapply()
        except ApplianceError as exc:
            self._store.record_error(router_id, f"drift repair: {exc}")

    def _observation(
        self,
        record: RouterRecord,
        snapshot: RouterSnapshot | None,
        view: InstanceView | None,
        now: float,
    ) -> Observation:
        last_failure = record.last_failure_at
        return Observation(
            now=now,
            managed=record.managed,
            router_exists=snapshot is not None,
            desired_generation=record.desired_generation,
            instance=view,
            failures=record.error_count,
            last_failure_at=last_failure.replace(tzinfo=UTC).timestamp() if last_failure else None,
            error_generation=record.error_generation,
            rebuild_requested=record.rebuild_requested,
        )

    # -- act ---------------------------------------------------------------------------

    def _act(
        self,
        decision: Decision,
        record: RouterRecord,
        snapshot: RouterSnapshot | None,
        instance: InstanceRecord | None,
        provided: Instance | None,
        retiring: Sequence[InstanceRecord],
    ) -> float | None:
        router_id = record.id
        if decision.failure and instance is not None:
            self._failed(router_id, instance, decision.reason, provided)
        try:
            if decision.action is Action.BOOT and snapshot is not None:
                self._boot(record, snapshot, with_data_ports=True)
                return self._settings.policy.boot_poll_interval
            if decision.action is Action.REPLACE and snapshot is not None:
                if not (record.rebuild_requested or self._replacement_allowed()):
                    LOG.warning("router %s: not replaced: the circuit breaker is open", router_id)
                    return 5.0
                self._replace(record, snapshot, instance, retiring, decision.reason)
                return self._settings.policy.boot_poll_interval
        except ProviderError as exc:
            # Nova's own words (quota, no valid host...): in the log, the store and, once
            # failures add up, ERROR in Neutron.
            count = self._store.record_error(router_id, f"boot: {exc}")
            self._store.log(f"boot failed ({count}): {exc}", router_id)
            LOG.error("router %s: boot failed (%s): %s", router_id, count, exc)
            return 0.0
        if decision.action is Action.PUSH_CONFIG and snapshot and instance and provided:
            return self._push(record, snapshot, instance, provided, retiring)
        if decision.action is Action.DELETE_INSTANCE:
            for each in [*retiring, *([instance] if instance else [])]:
                self._delete_instance(each)
            return 0.0
        if decision.action is Action.FORGET:
            self._store.forget_router(router_id)
            self._store.log("router deleted; nothing left", router_id)
            LOG.info("router %s: deleted, nothing left", router_id)
        if decision.action is Action.MARK_ERROR:
            self._store.mark_error(router_id, record.desired_generation)
            self._store.log(f"ERROR: {decision.reason}: {record.last_error}", router_id)
            LOG.error("router %s: ERROR after %s", router_id, decision.reason)
        return None

    def _failed(
        self,
        router_id: str,
        instance: InstanceRecord,
        reason: str,
        provided: Instance | None,
    ) -> None:
        """An instance that never came up counts as a failure (the router ends in ERROR)."""
        detail = f"instance {instance.id}: {reason}"
        if provided is not None and provided.fault:
            detail += f": {provided.fault}"
        count = self._store.record_error(router_id, detail)
        self._store.log(f"{detail} ({count})", router_id, instance.id)
        LOG.error("router %s: %s (%s)", router_id, detail, count)

    def _replace(
        self,
        record: RouterRecord,
        snapshot: RouterSnapshot,
        instance: InstanceRecord | None,
        retiring: Sequence[InstanceRecord],
        reason: str,
    ) -> None:
        """Build the replacement first; the old instance keeps its ports until it takes over."""
        router_id = record.id
        self._telemetry.replaced(replacement_cause(record, instance))
        if instance is not None:
            self._store.log(f"replacing instance: {reason}", router_id, instance.id)
            if retiring:
                # The newest is a replacement that never took over: it holds no data port.
                self._delete_instance(instance)
        self._store.request_rebuild(router_id, False)
        self._boot(record, snapshot, with_data_ports=instance is None and not retiring)

    def _boot(self, record: RouterRecord, snapshot: RouterSnapshot, with_data_ports: bool) -> None:
        router_id = record.id
        instance_id = self._provider.allocate_id(router_id, record.image, record.flavor)
        # Recorded first: a crash during boot leaves a record the next step cleans up.
        self._store.add_instance(instance_id, router_id, self._provider.name, instance_id)
        spec = instance_spec(
            instance_id, snapshot, with_data_ports, image=record.image, flavor=record.flavor
        )
        try:
            booted = self._provider.boot(spec)
        except ProviderError:
            # Nothing of it is kept: the next attempt boots afresh.
            self._provider.delete(instance_id)
            self._store.remove_instance(instance_id)
            raise
        self._store.update_instance(instance_id, management_address=booted.management_address)
        self._store.log("instance booted", router_id, instance_id)
        LOG.info(
            "router %s: booted instance %s at %s", router_id, instance_id, booted.management_address
        )

    def _delete_instance(self, instance: InstanceRecord) -> None:
        self._provider.delete(instance.id)
        self._store.remove_instance(instance.id)
        self._store.log("instance deleted", instance.router_id, instance.id)
        LOG.info("router %s: deleted instance %s", instance.router_id, instance.id)

    def _push(
        self,
        record: RouterRecord,
        snapshot: RouterSnapshot,
        instance: InstanceRecord,
        provided: Instance,
        retiring: Sequence[InstanceRecord],
    ) -> float | None:
        router_id, generation = record.id, record.desired_generation
        try:
            self._release_ports(retiring)
            # After a failure, plug every port again (idempotent): a crash in the middle of a
            # plug can leave a port recorded by the provider but not wired.
            provided = self._replug(provided, data_ports(snapshot), again=record.error_count > 0)
            document = self._document(snapshot, generation, instance, provided)
            with self._clients(provided.management_address) as client:
                client.put_config(document)
        except RenderFailed as exc:
            self._store.record_error(router_id, f"render: {exc}")
            self._store.mark_error(router_id, generation)
            self._store.log(f"ERROR: generation {generation} cannot be rendered: {exc}", router_id)
            LOG.error(
                "router %s: ERROR: generation %s cannot be rendered: %s", router_id, generation, exc
            )
            return 0.0  # observe again: the state machine now says ERROR (and Neutron hears it)
        except StaleGeneration as exc:
            # The appliance is ahead of the store (a store restored from backup, say): move on.
            self._store.raise_generation(router_id, (exc.applied_generation or 0) + 1)
            return 0.0
        except (ApplianceError, RuntimeError) as exc:
            self._telemetry.apply_failed(failed_step(exc))
            count = self._store.record_error(router_id, f"configure: {exc}")
            self._store.log(f"configuration failed ({count}): {exc}", router_id, instance.id)
            LOG.warning(
                "router %s: configuration %s failed (%s): %s", router_id, generation, count, exc
            )
            return 0.0
        self._store.update_instance(instance.id, acknowledged_generation=generation)
        self._store.clear_errors(router_id)
        self._store.log(f"generation {generation} applied", router_id, instance.id)
        LOG.info("router %s: generation %s applied by %s", router_id, generation, instance.id)
        return 0.0  # observe again at once: confirms ACTIVE, or pushes what changed meanwhile

    def _release_ports(self, retiring: Sequence[InstanceRecord]) -> None:
        """Take the data ports off instances being replaced, so the new one can have them."""
        for old in retiring:
            found = self._provider.get(old.id)
            if found is None:
                continue
            for port in found.ports:
                if port.kind != "management":
                    found = self._provider.unplug(found, port.port_id)

    def _replug(self, provided: Instance, wanted: Sequence[PortSpec], again: bool) -> Instance:
        have = {port.port_id for port in provided.ports if port.kind != "management"}
        for port in wanted:
            if again or port.port_id not in have:
                provided = self._provider.plug(provided, port)
        for port_id in have - {port.port_id for port in wanted}:
            provided = self._provider.unplug(provided, port_id)
        return provided

    def _document(
        self,
        snapshot: RouterSnapshot,
        generation: int,
        instance: InstanceRecord,
        provided: Instance,
    ) -> ApplianceConfig:
        try:
            management_port = next(p for p in provided.ports if p.kind == "management")
            prefixlen = provided.management_prefixlen or self._settings.management_prefixlen
            address = ip_interface(f"{provided.management_address}/{prefixlen}")
            management = ManagementPort(
                network_id=management_port.network_id,
                mac=management_port.mac,
                addresses=(address,),
                mtu=management_port.mtu,
            )
            nic_macs = {p.port_id: p.mac for p in provided.ports if p.kind != "management"}
            return render(
                snapshot,
                generation,
                management,
                self._settings.metadata,
                nic_macs,
                self._settings.services,
            )
        except ValidationError as exc:
            raise RenderFailed(validation_summary(exc)) from exc
        except Exception as exc:  # any other renderer failure: the same data fails again
            raise RenderFailed(f"{type(exc).__name__}: {exc}") from exc
