"""Databases of our own on the local MariaDB, made through root's unix socket.

Each database gets a user of its own with a password, reached over TCP on 127.0.0.1 as a
service would be (root only logs in over the socket on Debian).
"""

from __future__ import annotations

from urllib.parse import quote

import pymysql

SOCKET = "/run/mysqld/mysqld.sock"


def _as_root(*statements: tuple[str, tuple[str, ...]]) -> None:
    conn = pymysql.connect(unix_socket=SOCKET, user="root")
    try:
        with conn.cursor() as cursor:
            for sql, args in statements:
                cursor.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def create_database(name: str, user: str, password: str) -> str:
    """An empty database ``name`` (dropped first if it exists) that ``user`` owns; its URL."""
    _as_root(
        (f"DROP DATABASE IF EXISTS `{name}`", ()),
        (f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", ()),
        (f"CREATE USER IF NOT EXISTS '{user}'@'127.0.0.1' IDENTIFIED BY %s", (password,)),
        (f"ALTER USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (password,)),
        (f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'127.0.0.1'", ()),
    )
    return database_url(name, user, password)


def database_url(name: str, user: str, password: str) -> str:
    """The SQLAlchemy URL of database ``name`` for ``user`` over TCP on loopback."""
    return f"mysql+pymysql://{user}:{quote(password, safe='')}@127.0.0.1/{name}"


def drop_database(name: str, user: str) -> None:
    _as_root(
        (f"DROP DATABASE IF EXISTS `{name}`", ()),
        (f"DROP USER IF EXISTS '{user}'@'127.0.0.1'", ()),
    )


def databases(prefix: str) -> list[str]:
    """Names of the databases that start with ``prefix``."""
    conn = pymysql.connect(unix_socket=SOCKET, user="root")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            return [row[0] for row in cursor.fetchall() if row[0].startswith(prefix)]
    finally:
        conn.close()
