"""The orchestrator's store: routers, their instances and an event log, in SQL.

SQLAlchemy 2.0 models plus a small repository (``Store``) that hands out frozen records, so
no caller ever holds a session or a live ORM object. The schema is created by the alembic
migrations in ``astara.orchestrator.migrations`` (``upgrade(url)``), never by ``create_all``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    bindparam,
    case,
    create_engine,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

ID = String(64)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class RouterRow(Base):
    __tablename__ = "routers"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, index=True)
    state: Mapped[str] = mapped_column(String(32), default="new")
    desired_generation: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The desired generation when the router entered ERROR; a newer one leaves ERROR.
    error_generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What Neutron said last (a digest): the generation moves on only when it changes.
    snapshot_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rebuild_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    debug: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # An operator's rebuild chose these instead of the configured image and flavor; every
    # later boot of the router keeps them.
    image: Mapped[str | None] = mapped_column(String(255), nullable=True)
    flavor: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ProjectRow(Base):
    """Operator flags of a whole project (its routers, also those created later)."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    debug: Mapped[bool] = mapped_column(Boolean, default=False)


class InstanceRow(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    router_id: Mapped[str] = mapped_column(
        ID, ForeignKey("routers.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[str] = mapped_column(String(255))
    management_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acknowledged_generation: Mapped[int] = mapped_column(Integer, default=0)
    health: Mapped[str] = mapped_column(String(32), default="unknown")
    ever_reachable: Mapped[bool] = mapped_column(Boolean, default=False)
    # Flushed in batches from the heartbeat receiver, never once per heartbeat.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class EventLogRow(Base):
    __tablename__ = "event_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    router_id: Mapped[str | None] = mapped_column(ID, nullable=True, index=True)
    instance_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    message: Mapped[str] = mapped_column(Text)
    # Who asked, for what an operator did (None: the orchestrator's own doing).
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)


@dataclass(frozen=True)
class RouterRecord:
    id: str
    project_id: str
    state: str
    desired_generation: int
    error_count: int
    last_error: str | None
    last_failure_at: datetime | None
    error_generation: int | None
    snapshot_digest: str | None
    rebuild_requested: bool
    managed: bool
    debug: bool
    updated_at: datetime
    image: str | None = None
    flavor: str | None = None


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    router_id: str
    provider: str
    provider_ref: str
    management_address: str | None
    acknowledged_generation: int
    health: str
    ever_reachable: bool
    last_seen_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class WatchedInstance:
    """What the health loop follows of an instance with a management address."""

    id: str
    router_id: str
    management_address: str
    ever_reachable: bool


@dataclass(frozen=True)
class EventRecord:
    id: int
    time: datetime
    router_id: str | None
    instance_id: str | None
    message: str
    actor: str | None = None


R = TypeVar("R", RouterRecord, InstanceRecord, WatchedInstance, EventRecord)


class NotFound(LookupError):
    """No row with that id."""


class Store:
    """The repository; safe to share between threads (one short session per call)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # Routers

    def ensure_router(self, router_id: str, project_id: str) -> RouterRecord:
        """The router's row, created (state "new") the first time it is seen; it starts in
        debug when its project is."""
        with self._session() as session:
            row = session.get(RouterRow, router_id)
            if row is None:
                project = session.get(ProjectRow, project_id)
                row = RouterRow(
                    id=router_id, project_id=project_id, debug=bool(project and project.debug)
                )
                session.add(row)
                session.flush()
            return _record(RouterRecord, row)

    def get_router(self, router_id: str) -> RouterRecord | None:
        with self._session() as session:
            row = session.get(RouterRow, router_id)
            return _record(RouterRecord, row) if row is not None else None

    def list_routers(
        self,
        project_id: str | None = None,
        *,
        state: str | None = None,
        failing: bool | None = None,
    ) -> list[RouterRecord]:
        """Routers, by id; of one project, in one state, with (or without) a last error."""
        query = select(RouterRow).order_by(RouterRow.id)
        if project_id is not None:
            query = query.where(RouterRow.project_id == project_id)
        if state is not None:
            query = query.where(RouterRow.state == state)
        if failing is not None:
            error = RouterRow.last_error
            query = query.where(error.is_not(None) if failing else error.is_(None))
        with self._session() as session:
            return [_record(RouterRecord, row) for row in session.scalars(query)]

    def count_routers_by_state(self) -> dict[str, int]:
        query = select(RouterRow.state, func.count()).group_by(RouterRow.state)
        with self.engine.connect() as connection:
            return {state: count for state, count in connection.execute(query)}

    def set_state(self, router_id: str, state: str) -> None:
        self._update_router(router_id, state=state)

    def next_generation(self, router_id: str) -> int:
        """Raise the desired generation by one, atomically, and return it."""
        with self._session() as session:
            found = session.execute(
                update(RouterRow)
                .where(RouterRow.id == router_id)
                .values(desired_generation=RouterRow.desired_generation + 1, updated_at=utcnow())
            )
            if found.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(router_id)
            generation: int = session.scalars(
                select(RouterRow.desired_generation).where(RouterRow.id == router_id)
            ).one()
            return generation

    def record_error(self, router_id: str, message: str) -> int:
        """Count one more consecutive failure; return the count."""
        with self._session() as session:
            row = _required(session, router_id)
            row.error_count += 1
            row.last_error = message
            row.last_failure_at = utcnow()
            return row.error_count

    def clear_errors(self, router_id: str) -> None:
        """A success: no failure counted, not in ERROR."""
        self._update_router(
            router_id, error_count=0, last_error=None, last_failure_at=None, error_generation=None
        )

    def mark_error(self, router_id: str, generation: int) -> None:
        """ERROR, until the desired generation passes ``generation`` or a rebuild."""
        self._update_router(router_id, error_generation=generation)

    def request_rebuild(self, router_id: str, requested: bool) -> None:
        values: dict[str, object] = {"rebuild_requested": requested}
        if requested:
            values.update(error_count=0, error_generation=None, last_failure_at=None)
        self._update_router(router_id, **values)

    def set_desired(self, router_id: str, digest: str) -> RouterRecord:
        """Record what Neutron says now; the generation moves on when it changed."""
        with self._session() as session:
            row = _required(session, router_id, lock=True)
            if row.snapshot_digest != digest:
                row.snapshot_digest = digest
                row.desired_generation += 1
            return _record(RouterRecord, row)

    def raise_generation(self, router_id: str, at_least: int) -> None:
        with self._session() as session:
            row = _required(session, router_id, lock=True)
            row.desired_generation = max(row.desired_generation, at_least)

    def set_managed(self, router_id: str, managed: bool) -> None:
        self._update_router(router_id, managed=managed)

    def set_debug(self, router_id: str, debug: bool) -> None:
        self._update_router(router_id, debug=debug)

    def set_boot_overrides(self, router_id: str, image: str | None, flavor: str | None) -> None:
        """The image and flavor the router's next boots use (None: the configured one)."""
        self._update_router(router_id, image=image, flavor=flavor)

    def project_debug(self, project_id: str) -> bool:
        with self._session() as session:
            row = session.get(ProjectRow, project_id)
            return bool(row and row.debug)

    def set_project_debug(self, project_id: str, debug: bool) -> int:
        """Debug for the project's routers, now and later; return how many it has now."""
        with self._session() as session:
            row = session.get(ProjectRow, project_id)
            if row is None:
                session.add(ProjectRow(id=project_id, debug=debug))
            else:
                row.debug = debug
            changed = session.execute(
                update(RouterRow)
                .where(RouterRow.project_id == project_id)
                .values(debug=debug, updated_at=utcnow())
            )
            return int(changed.rowcount)  # type: ignore[attr-defined]

    def forget_router(self, router_id: str) -> None:
        """Drop the router and its instances (the event log keeps its history)."""
        with self._session() as session:
            for instance in session.scalars(
                select(InstanceRow).where(InstanceRow.router_id == router_id)
            ):
                session.delete(instance)
            row = session.get(RouterRow, router_id)
            if row is not None:
                session.delete(row)

    def _update_router(self, router_id: str, **values: object) -> None:
        with self._session() as session:
            row = _required(session, router_id)
            for name, value in values.items():
                setattr(row, name, value)

    # Instances

    def add_instance(
        self,
        instance_id: str,
        router_id: str,
        provider: str,
        provider_ref: str,
        management_address: str | None = None,
    ) -> InstanceRecord:
        with self._session() as session:
            row = InstanceRow(
                id=instance_id,
                router_id=router_id,
                provider=provider,
                provider_ref=provider_ref,
                management_address=management_address,
            )
            session.add(row)
            session.flush()
            return _record(InstanceRecord, row)

    def instances(self, router_id: str) -> list[InstanceRecord]:
        query = (
            select(InstanceRow)
            .where(InstanceRow.router_id == router_id)
            .order_by(InstanceRow.created_at, InstanceRow.id)
        )
        with self._session() as session:
            return [_record(InstanceRecord, row) for row in session.scalars(query)]

    def update_instance(
        self,
        instance_id: str,
        *,
        management_address: str | None = None,
        acknowledged_generation: int | None = None,
        health: str | None = None,
        ever_reachable: bool | None = None,
    ) -> InstanceRecord:
        """Change the given fields (None leaves a field as it is)."""
        with self._session() as session:
            row = session.get(InstanceRow, instance_id)
            if row is None:
                raise NotFound(instance_id)
            if management_address is not None:
                row.management_address = management_address
            if acknowledged_generation is not None:
                row.acknowledged_generation = acknowledged_generation
            if health is not None:
                row.health = health
            if ever_reachable is not None:
                row.ever_reachable = ever_reachable
            return _record(InstanceRecord, row)

    def all_instances(self) -> list[InstanceRecord]:
        """Every instance. Read as plain rows, not ORM objects: the health loop asks every
        second, and building ORM objects doubled its cost."""
        columns = [getattr(InstanceRow, field.name) for field in fields(InstanceRecord)]
        with self.engine.connect() as connection:
            return [_record(InstanceRecord, row) for row in connection.execute(select(*columns))]

    def watched_instances(self) -> list[WatchedInstance]:
        """Instances with a management address, four columns of them: the health loop reads
        this every second, and at 5,000 instances every column more (two timestamps parsed a
        row) cost several per cent of a core."""
        columns = [getattr(InstanceRow, field.name) for field in fields(WatchedInstance)]
        query = select(*columns).where(InstanceRow.management_address.is_not(None))
        with self.engine.connect() as connection:
            return [_record(WatchedInstance, row) for row in connection.execute(query)]

    def watch_signature(self) -> tuple[object, ...]:
        """Changes whenever ``watched_instances`` would (an instance added, removed, given an
        address or first reachable), for the price of one aggregate row."""
        query = select(
            func.count(),
            func.count(InstanceRow.management_address),
            func.sum(case((InstanceRow.ever_reachable, 1), else_=0)),
            func.max(InstanceRow.created_at),
        )
        with self.engine.connect() as connection:
            return tuple(connection.execute(query).one())

    def unmanaged_instance_ids(self) -> set[str]:
        """The instances of routers an operator unmanaged."""
        query = (
            select(InstanceRow.id)
            .join(RouterRow, RouterRow.id == InstanceRow.router_id)
            .where(RouterRow.managed.is_(False))
        )
        with self.engine.connect() as connection:
            return set(connection.scalars(query))

    def record_last_seen(self, seen: Mapping[str, float]) -> None:
        """One batch of heartbeat times (epoch seconds): one statement, one transaction."""
        if not seen:
            return
        statement = (
            update(InstanceRow)
            .where(InstanceRow.id == bindparam("instance_id"))
            .values(last_seen_at=bindparam("seen_at"))
        )
        with self.engine.begin() as connection:
            connection.execute(
                statement,
                [
                    {
                        "instance_id": instance_id,
                        "seen_at": datetime.fromtimestamp(at, UTC).replace(tzinfo=None),
                    }
                    for instance_id, at in seen.items()
                ],
            )

    def remove_instance(self, instance_id: str) -> None:
        with self._session() as session:
            row = session.get(InstanceRow, instance_id)
            if row is not None:
                session.delete(row)

    # Event log

    def log(
        self,
        message: str,
        router_id: str | None = None,
        instance_id: str | None = None,
        actor: str | None = None,
    ) -> None:
        with self._session() as session:
            session.add(
                EventLogRow(
                    router_id=router_id, instance_id=instance_id, message=message, actor=actor
                )
            )

    def events(self, router_id: str | None = None, limit: int = 100) -> list[EventRecord]:
        """The newest ``limit`` log entries, newest first."""
        query = select(EventLogRow).order_by(EventLogRow.id.desc()).limit(limit)
        if router_id is not None:
            query = query.where(EventLogRow.router_id == router_id)
        with self._session() as session:
            return [_record(EventRecord, row) for row in session.scalars(query)]


def _required(session: Session, router_id: str, lock: bool = False) -> RouterRow:
    row = session.get(RouterRow, router_id, with_for_update=lock)
    if row is None:
        raise NotFound(router_id)
    return row


def _record(kind: type[R], row: Any) -> R:
    """The record of a row (an ORM object or a plain result row): its fields, by name."""
    return kind(**{field.name: getattr(row, field.name) for field in fields(kind)})
