"""The store on MariaDB: the same migrations and repository checks as on SQLite."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pymysql
import pytest

from astara.orchestrator.migrations import upgrade
from astara.orchestrator.store import Store
from tests.unit.test_store import check_migrations, check_repository

pytestmark = pytest.mark.functional

SOCKET = "/run/mysqld/mysqld.sock"


def as_root(*statements: tuple[str, tuple[str, ...]]) -> None:
    conn = pymysql.connect(unix_socket=SOCKET, user="root")
    try:
        with conn.cursor() as cursor:
            for sql, args in statements:
                cursor.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh database and user (with a password, over TCP), dropped afterwards."""
    name = "tD_store_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(12) + "%"  # a '%' checks the URL is passed through intact
    as_root(
        (f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", ()),
        (f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY %s", (password,)),
        (f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{name}'@'127.0.0.1'", ()),
    )
    try:
        quoted = password.replace("%", "%25")
        yield f"mysql+pymysql://{name}:{quoted}@127.0.0.1/{name}"
    finally:
        as_root(
            (f"DROP DATABASE IF EXISTS `{name}`", ()),
            (f"DROP USER IF EXISTS '{name}'@'127.0.0.1'", ()),
        )


def test_migrations_on_mariadb_match_the_models(mariadb_url: str) -> None:
    check_migrations(mariadb_url)


def test_repository_on_mariadb(mariadb_url: str) -> None:
    upgrade(mariadb_url)
    store = Store(mariadb_url)
    try:
        check_repository(store)
    finally:
        store.engine.dispose()
