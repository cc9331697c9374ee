"""The store on MariaDB: the same migrations and repository checks as on SQLite."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from astara.orchestrator.migrations import upgrade
from astara.orchestrator.store import Store
from astara.testing.mariadb import create_database, drop_database
from tests.unit.test_store import check_migrations, check_repository

pytestmark = pytest.mark.functional


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh database and user (with a password, over TCP), dropped afterwards."""
    name = "tD_store_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(12) + "%"  # a '%' checks the URL is passed through intact
    try:
        yield create_database(name, name, password)
    finally:
        drop_database(name, name)


def test_migrations_on_mariadb_match_the_models(mariadb_url: str) -> None:
    check_migrations(mariadb_url)


def test_repository_on_mariadb(mariadb_url: str) -> None:
    upgrade(mariadb_url)
    store = Store(mariadb_url)
    try:
        check_repository(store)
    finally:
        store.engine.dispose()
