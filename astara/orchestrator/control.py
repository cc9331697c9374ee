"""The operator's control surface as plain calls: what the management API serves.

Reads put together what the store, the health loop and the workers' latest statuses know.
Actions first check that they make sense; when one does not (an unknown router, a router
that is unmanaged, a breaker that is closed) it raises ``Refused`` with the reason and
changes nothing. Otherwise it records itself in the event log with who asked, then reaches
the router's worker as an event. The worker decides what to do, as for any event: an action
is a request, and a crash between the two is repaired by the next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Protocol

from astara.orchestrator.api import models
from astara.orchestrator.breaker import BreakerView
from astara.orchestrator.dispatcher import owner
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.health_loop import HealthView
from astara.orchestrator.state import State
from astara.orchestrator.store import EventRecord, InstanceRecord, RouterRecord, Store
from astara.orchestrator.telemetry import WorkerStatus

OPERATOR_CAUSE = "operator"  # the cause of the events an operator's action sends
RECENT_EVENTS = 20  # events shown with a router
GONE = frozenset({State.DELETING.value, State.DELETED.value})


class Refused(Exception):
    """The request cannot be carried out as it stands; nothing changed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Health(Protocol):
    """The parent's health loop, as the control surface reads and steers it."""

    def health_of(self, instance_id: str) -> HealthView: ...

    def breaker_view(self) -> BreakerView: ...

    def clear_breaker(self) -> None: ...

    def watched(self) -> int: ...


class Workers(Protocol):
    """The dispatcher, as the control surface reads it."""

    @property
    def processes(self) -> int: ...

    def pids(self) -> list[int | None]: ...

    def queue_sizes(self) -> list[int]: ...


class Control:
    def __init__(
        self,
        store: Store,
        dispatch: Callable[[Event], None],
        health: Health,
        workers: Workers,
        statuses: Callable[[], Mapping[int, WorkerStatus]],
        reload: Callable[[], list[models.OptionChange]],
    ) -> None:
        self._store = store
        self._dispatch = dispatch
        self._health = health
        self._workers = workers
        self._statuses = statuses
        self._reload = reload

    # -- reads ------------------------------------------------------------------------

    def routers(
        self,
        project_id: str | None = None,
        state: str | None = None,
        failing: bool | None = None,
    ) -> list[models.Router]:
        routers = self._store.list_routers(project_id, state=state, failing=failing)
        newest: dict[str, InstanceRecord] = {}
        for instance in sorted(self._store.all_instances(), key=lambda i: i.created_at):
            newest[instance.router_id] = instance
        return [self._router(r, newest.get(r.id)) for r in routers]

    def router(self, router_id: str) -> models.RouterDetail:
        record = self._known(router_id)
        instances = self._store.instances(router_id)
        summary = self._router(record, instances[-1] if instances else None)
        return models.RouterDetail(
            **summary.model_dump(),
            instances=[self._instance(i) for i in instances],
            worker=self._worker_of(router_id),
            events=[_event(e) for e in self._store.events(router_id, RECENT_EVENTS)],
        )

    def project_of(self, router_id: str) -> str:
        return self._known(router_id).project_id

    def instances(self, router_id: str | None = None) -> list[models.Instance]:
        found = self._store.instances(router_id) if router_id else self._store.all_instances()
        return [self._instance(i) for i in found]

    def events(self, router_id: str | None = None, limit: int = 100) -> list[models.Event]:
        return [_event(e) for e in self._store.events(router_id, limit)]

    def workers(self) -> list[models.Worker]:
        statuses = self._statuses()
        pids = self._workers.pids()
        sizes = self._workers.queue_sizes()
        return [
            _worker(index, pids[index], sizes[index], statuses.get(index))
            for index in range(self._workers.processes)
        ]

    def breaker(self) -> models.Breaker:
        view = self._health.breaker_view()
        return models.Breaker(**asdict(view), watched_instances=self._health.watched())

    def project(self, project_id: str) -> models.Project:
        return models.Project(
            id=project_id,
            debug=self._store.project_debug(project_id),
            routers=len(self._store.list_routers(project_id)),
        )

    # -- actions ----------------------------------------------------------------------

    def rebuild(
        self, router_id: str, actor: str, overrides: Mapping[str, str | None]
    ) -> models.Accepted:
        """Replace the router's instance; ``overrides`` may set ``image`` and ``flavor``
        (None: back to the configured one); those not given stay as they are."""
        record = self._acting_on(router_id, "rebuilding")
        if overrides:
            image = overrides.get("image", record.image)
            flavor = overrides.get("flavor", record.flavor)
            self._store.set_boot_overrides(router_id, image, flavor)
        choice = ", ".join(f"{key} {value or 'as configured'}" for key, value in overrides.items())
        self._store.request_rebuild(router_id, True)
        self._store.log(
            f"rebuild requested{f' ({choice})' if choice else ''}", router_id, None, actor
        )
        self._send(record, EventAction.REBUILD)
        return models.Accepted(
            router_id=router_id, action="rebuild", detail="a new instance replaces the current one"
        )

    def poll(self, router_id: str, actor: str) -> models.Accepted:
        record = self._acting_on(router_id, "polling")
        self._store.log("poll requested", router_id, None, actor)
        self._send(record, EventAction.POLL)
        return models.Accepted(
            router_id=router_id, action="poll", detail="Neutron and the appliance are read again"
        )

    def set_managed(self, router_id: str, managed: bool, actor: str) -> models.RouterDetail:
        record = self._known(router_id)
        if record.managed == managed:
            raise Refused(409, f"router {router_id} is already {_managed(managed)}")
        self._store.set_managed(router_id, managed)
        self._store.log(f"router {_managed(managed)}", router_id, None, actor)
        # Its worker records the new state at once (and, managed again, catches up).
        self._send(record, EventAction.POLL)
        return self.router(router_id)

    def set_debug(self, router_id: str, enabled: bool, actor: str) -> models.RouterDetail:
        record = self._known(router_id)
        if record.debug == enabled:
            raise Refused(409, f"debug is already {_on(enabled)} for router {router_id}")
        self._store.set_debug(router_id, enabled)
        self._store.log(f"debug {_on(enabled)}", router_id, None, actor)
        return self.router(router_id)

    def set_project_debug(self, project_id: str, enabled: bool, actor: str) -> models.Project:
        if self._store.project_debug(project_id) == enabled:
            raise Refused(409, f"debug is already {_on(enabled)} for project {project_id}")
        routers = self._store.set_project_debug(project_id, enabled)
        self._store.log(
            f"debug {_on(enabled)} for project {project_id} ({routers} routers now)",
            None,
            None,
            actor,
        )
        return self.project(project_id)

    def reset_breaker(self, actor: str) -> models.Breaker:
        view = self._health.breaker_view()
        if not view.open:
            raise Refused(409, "the circuit breaker is closed: nothing to reset")
        self._health.clear_breaker()
        self._store.log(f"circuit breaker reset (it was open: {view.reason})", None, None, actor)
        return self.breaker()

    def reload_config(self, actor: str) -> models.Reloaded:
        changed = self._reload()
        names = ", ".join(c.option for c in changed) or "nothing changed"
        self._store.log(f"configuration reloaded: {names}", None, None, actor)
        return models.Reloaded(changed=changed)

    # -- helpers ----------------------------------------------------------------------

    def _known(self, router_id: str) -> RouterRecord:
        record = self._store.get_router(router_id)
        if record is None:
            raise Refused(404, f"router {router_id} is not known to Astara")
        return record

    def _acting_on(self, router_id: str, doing: str) -> RouterRecord:
        record = self._known(router_id)
        if not record.managed:
            raise Refused(409, f"router {router_id} is unmanaged: manage it before {doing} it")
        if record.state in GONE:
            raise Refused(409, f"router {router_id} is being deleted ({record.state})")
        return record

    def _send(self, record: RouterRecord, action: EventAction) -> None:
        self._dispatch(
            Event(
                ResourceType.ROUTER,
                record.id,
                record.project_id,
                action,
                OPERATOR_CAUSE,
                datetime.now(UTC),
            )
        )

    def _router(self, record: RouterRecord, newest: InstanceRecord | None) -> models.Router:
        return models.Router(
            id=record.id,
            project_id=record.project_id,
            state=record.state,
            managed=record.managed,
            debug=record.debug,
            desired_generation=record.desired_generation,
            acknowledged_generation=newest.acknowledged_generation if newest else None,
            error_count=record.error_count,
            last_error=record.last_error,
            instance_id=newest.id if newest else None,
            health=self._health.health_of(newest.id).status if newest else None,
            image=record.image,
            flavor=record.flavor,
            updated_at=_utc(record.updated_at),
        )

    def _instance(self, record: InstanceRecord) -> models.Instance:
        health = self._health.health_of(record.id)
        return models.Instance(
            id=record.id,
            router_id=record.router_id,
            provider=record.provider,
            management_address=record.management_address,
            acknowledged_generation=record.acknowledged_generation,
            ever_reachable=record.ever_reachable,
            health=health.status,
            last_heartbeat_at=_epoch(health.last_heartbeat_at),
            reported_generation=health.reported_generation,
            drifted=health.drifted,
            created_at=_utc(record.created_at),
        )

    def _worker_of(self, router_id: str) -> models.WorkerRef:
        index = owner(router_id, self._workers.processes)
        status = self._statuses().get(index)
        threads = status.scheduler.threads if status else ()
        stepping = next((t.name for t in threads if t.router_id == router_id), None)
        return models.WorkerRef(index=index, pid=self._workers.pids()[index], thread=stepping)


def _worker(index: int, pid: int | None, queued: int, status: WorkerStatus | None) -> models.Worker:
    scheduler = status.scheduler if status else None
    return models.Worker(
        index=index,
        pid=pid,
        alive=pid is not None,
        queue_events=queued,
        inbox_events=scheduler.queued_events if scheduler else None,
        routers=scheduler.routers if scheduler else None,
        ready_routers=scheduler.ready if scheduler else None,
        scheduled=scheduler.scheduled if scheduler else None,
        threads=[
            models.Thread(name=t.name, router_id=t.router_id, since=_epoch(t.since))
            for t in (scheduler.threads if scheduler else ())
        ],
        reported_at=_epoch(status.at) if status else None,
    )


def _event(record: EventRecord) -> models.Event:
    return models.Event(**{**asdict(record), "time": _utc(record.time)})


def _utc(naive: datetime) -> datetime:
    """The store keeps naive UTC times; the API says they are UTC."""
    return naive.replace(tzinfo=UTC)


def _epoch(at: float | None) -> datetime | None:
    return datetime.fromtimestamp(at, UTC) if at is not None else None


def _managed(managed: bool) -> str:
    return "managed" if managed else "unmanaged"


def _on(enabled: bool) -> str:
    return "on" if enabled else "off"
