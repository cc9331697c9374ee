"""Make sure the services Astara's tests and demo need answer on loopback.

RabbitMQ, MariaDB and Redis: when one does not answer it is started if installed, installed
with apt-get if absent (as root), or the caller gets a message that says what to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    binary: str
    package: str
    start: tuple[str, ...]


SERVICES: tuple[Service, ...] = (
    Service(
        "RabbitMQ",
        5672,
        "/usr/sbin/rabbitmq-server",
        "rabbitmq-server",
        ("rabbitmq-server", "-detached"),
    ),
    Service(
        "MariaDB",
        3306,
        "/usr/sbin/mariadbd",
        "mariadb-server",
        (
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ),
    ),
    Service(
        "Redis",
        6379,
        "/usr/bin/redis-server",
        "redis-server",
        (
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ),
    ),
)


class ServiceError(RuntimeError):
    """A service could not be made to answer; the message says what to do."""


def answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _install(service: Service) -> None:
    if os.geteuid() != 0:
        raise ServiceError(
            f"{service.name} is not installed. Install it as root: "
            f"apt-get install {service.package}, or run this command as root."
        )
    print(f"    installing {service.package} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", service.package],
        check=True,
        env=env,
    )


def _start(service: Service) -> None:
    if service.package == "mariadb-server":
        # A fresh install without systemd has no socket directory for mariadbd.
        os.makedirs("/run/mysqld", exist_ok=True)
        if shutil.which("chown"):
            subprocess.run(["chown", "mysql:mysql", "/run/mysqld"], check=False)
    print(f"    starting {service.name}: {' '.join(service.start)}", flush=True)
    subprocess.run(list(service.start), check=False, stdout=subprocess.DEVNULL)


def ensure(service: Service, timeout: float = 90.0) -> None:
    if answers(service.port):
        print(f"    {service.name} answers on 127.0.0.1:{service.port}", flush=True)
        return
    if not os.path.exists(service.binary):
        _install(service)
        if answers(service.port):
            return
    _start(service)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(service.port):
            print(f"    {service.name} answers on 127.0.0.1:{service.port}", flush=True)
            return
        time.sleep(0.5)
    raise ServiceError(
        f"{service.name} did not answer on 127.0.0.1:{service.port} within {timeout:.0f} s. "
        f"Start it by hand ({' '.join(service.start)}) and look at its log."
    )


def ensure_all(services: Sequence[Service] = SERVICES) -> None:
    for service in services:
        ensure(service)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make sure RabbitMQ, MariaDB and Redis answer on loopback "
        "(start them, or install them with apt-get when running as root)."
    )
    parser.add_argument("action", choices=["ensure"], help="ensure: start what is not running")
    parser.parse_args(argv)
    try:
        ensure_all()
    except (ServiceError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
