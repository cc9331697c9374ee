"""The store on SQLite: migrations build exactly the models' schema; the repository works."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from astara.orchestrator.migrations import upgrade
from astara.orchestrator.store import Base, NotFound, Store

pytestmark = pytest.mark.unit


def schema_differences(url: str) -> list[object]:
    """What autogenerate would change to make the migrated database match the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            diffs: list[object] = compare_metadata(
                MigrationContext.configure(connection), Base.metadata
            )
            return diffs
    finally:
        engine.dispose()


def check_migrations(url: str) -> None:
    upgrade(url)
    upgrade(url)  # a second run is a no-op, not an error
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"routers", "instances", "event_log", "alembic_version"} <= tables
    assert schema_differences(url) == []


def check_repository(store: Store) -> None:
    created = store.ensure_router("r1", "p1")
    assert (created.state, created.desired_generation, created.managed, created.debug) == (
        "new",
        0,
        True,
        False,
    )
    assert store.ensure_router("r1", "other").project_id == "p1"
    store.ensure_router("r2", "p2")
    assert [r.id for r in store.list_routers()] == ["r1", "r2"]
    assert [r.id for r in store.list_routers("p2")] == ["r2"]

    assert [store.next_generation("r1") for _ in range(3)] == [1, 2, 3]
    store.set_state("r1", "active")
    assert store.record_error("r1", "boot timed out") == 1
    assert store.record_error("r1", "push refused") == 2
    router = store.get_router("r1")
    assert router is not None
    assert (router.state, router.desired_generation, router.error_count, router.last_error) == (
        "active",
        3,
        2,
        "push refused",
    )
    store.clear_errors("r1")
    store.set_managed("r1", False)
    store.set_debug("r1", True)
    router = store.get_router("r1")
    assert router is not None
    assert (router.error_count, router.last_error, router.managed, router.debug) == (
        0,
        None,
        False,
        True,
    )

    store.add_instance("i1", "r1", "netns", "tDns-1")
    store.update_instance("i1", management_address="fdca::10", acknowledged_generation=3)
    updated = store.update_instance("i1", health="healthy")
    assert (updated.management_address, updated.acknowledged_generation, updated.health) == (
        "fdca::10",
        3,
        "healthy",
    )
    store.add_instance("i2", "r1", "netns", "tDns-2")
    assert [i.id for i in store.instances("r1")] == ["i1", "i2"]
    assert store.all_instances() == store.instances("r1")
    seen_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # One batch; an instance deleted since its last heartbeat is skipped, not an error.
    store.record_last_seen({"i2": seen_at.timestamp(), "gone": seen_at.timestamp()})
    assert [i.last_seen_at for i in store.all_instances()] == [None, seen_at.replace(tzinfo=None)]
    store.remove_instance("i2")
    assert [i.id for i in store.instances("r1")] == ["i1"]

    store.log("booted", router_id="r1", instance_id="i1")
    store.log("configured generation 3", router_id="r1", instance_id="i1")
    store.log("something else", router_id="r2")
    assert [e.message for e in store.events("r1")] == ["configured generation 3", "booted"]
    assert len(store.events(limit=1)) == 1

    store.forget_router("r1")
    assert store.get_router("r1") is None
    assert store.instances("r1") == []
    assert len(store.events("r1")) == 2  # history outlives the router
    with pytest.raises(NotFound):
        store.next_generation("r1")
    with pytest.raises(NotFound):
        store.set_state("r1", "active")
    with pytest.raises(NotFound):
        store.update_instance("i1", health="dead")


def test_migrations_on_sqlite_match_the_models(tmp_path: Path) -> None:
    check_migrations(f"sqlite:///{tmp_path / 'astara.db'}")


def test_repository_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'astara.db'}"
    upgrade(url)
    check_repository(Store(url))


def test_generations_are_unique_under_concurrent_bumps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'astara.db'}"
    upgrade(url)
    store = Store(url)
    store.ensure_router("r1", "p1")
    seen: list[int] = []
    lock = threading.Lock()

    def bump() -> None:
        for _ in range(25):
            generation = store.next_generation("r1")
            with lock:
                seen.append(generation)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 101))
