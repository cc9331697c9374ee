"""astara-testbed: bring the real Neutron test bed up and down by hand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from astara.testing import services
from astara.testing.neutron_bed import NeutronTestbed, TestbedError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="astara-testbed",
        description=(
            "A real neutron-server 29.0.0 (its own venv, MariaDB database, notifications to "
            "RabbitMQ, noauth) on a free loopback port. 'up' is harmless when it already runs; "
            "'down' stops it. State and log: $ASTARA_TESTBED_DIR (default /var/lib/astara/testbed)."
        ),
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    bed = NeutronTestbed()
    if args.action == "status":
        running = bed.status()
        print(f"running at {running.url} (pid {running.pid})" if running else "not running")
        return 0 if running else 3
    if args.action == "down":
        bed.down()
        return 0
    try:
        services.ensure_all()
        endpoint = bed.up()
    except (TestbedError, services.ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(endpoint.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
