"""astara-testbed: bring a real test bed (Neutron alone, or a whole OpenStack) up and down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from astara.testing import services
from astara.testing.bedkit import TestbedError
from astara.testing.neutron_bed import NeutronTestbed
from astara.testing.openstack_bed.bed import OpenStackBed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="astara-testbed",
        description=(
            "'up' is harmless when the bed already runs; 'down' removes it. "
            "--cloud neutron (default): a real neutron-server 29.0.0 (its own venv, MariaDB "
            "database, notifications to RabbitMQ, noauth) on a free loopback port; state and "
            "log in $ASTARA_TESTBED_DIR (default /var/lib/astara/testbed). "
            "--cloud openstack: Keystone, Glance, Placement, Nova (libvirt, QEMU TCG) and "
            "Neutron (ML2/OVS with its agent, Astara's plugin), the management and external "
            "networks, flavors and a server group; state, logs and clouds.yaml in "
            "$ASTARA_CLOUD_BED_DIR (default /var/lib/astara/cloudbed); one per machine, root."
        ),
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--cloud",
        choices=["neutron", "openstack"],
        default="neutron",
        help="which bed: Neutron alone (default) or the whole OpenStack",
    )
    args = parser.parse_args(argv)
    if args.cloud == "openstack":
        return _openstack(args.action)
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


def _openstack(action: str) -> int:
    bed = OpenStackBed()
    if action == "status":
        pids = bed.status()
        for name, pid in pids.items():
            print(f"{name:28} {'pid ' + str(pid) if pid else 'not running'}")
        info = bed.info()
        up = info is not None and all(pids.values())
        if info is not None:
            print(f"clouds.yaml: {info.clouds_yaml} (entries astara-admin, astara-service, ...)")
            print(
                f"metadata API: port {info.metadata_port} on every address; shared secret "
                f"under 'metadata' in {bed.secrets.path}"
            )
        print("running" if up else "not running")
        return 0 if up else 3
    try:
        if action == "down":
            bed.down()
            return 0
        services.ensure_all()
        info = bed.up()
    except (TestbedError, services.ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(info.clouds_yaml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
