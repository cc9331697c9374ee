"""``astara-appliance``: the agent inside a router appliance.

Re-applies the last good configuration (so a rebooted appliance routes before the orchestrator
speaks again), then serves the API over HTTPS, accepting only clients whose certificate the
orchestrator's CA issued.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn

from astara.appliance.api import create_app
from astara.appliance.defaults import API_PORT
from astara.appliance.dnsmasq import DnsmasqSubsystem
from astara.appliance.engine import ApplyFailed, Engine
from astara.appliance.metadata import MetadataSubsystem
from astara.appliance.netlink import LinksSubsystem, resolve_links
from astara.appliance.nftables import NftablesSubsystem
from astara.appliance.radvd import RadvdSubsystem
from astara.appliance.status import KernelStatus
from astara.appliance.subsystem import Subsystem

LOG = logging.getLogger("astara.appliance")

DEFAULT_STATE_DIR = Path("/var/lib/astara-appliance")
LOG_FORMAT = "%(asctime)s %(levelname)s [router %(router_id)s] %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astara-appliance",
        description=(
            "Astara router appliance agent: serves the configuration API over HTTPS with "
            "mutual TLS and applies each configuration to this network namespace or host "
            "(addresses, nftables, dnsmasq, radvd, metadata proxy)."
        ),
        epilog=(
            "Example: astara-appliance --listen fdca:3ba5::5 --cert /etc/astara/appliance.pem "
            "--key /etc/astara/appliance.key --ca /etc/astara/ca.pem"
        ),
    )
    parser.add_argument(
        "--listen",
        default="::",
        metavar="ADDRESS",
        help="address to serve the API on, normally the management address (default: %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=API_PORT, help="API port (default: %(default)s)"
    )
    parser.add_argument("--cert", type=Path, help="this appliance's certificate (PEM); required")
    parser.add_argument("--key", type=Path, help="the private key of --cert (PEM); required")
    parser.add_argument(
        "--ca",
        type=Path,
        help="the orchestrator's CA certificate (PEM): clients must hold a certificate it "
        "issued; required",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where the last good configuration and the daemons' files live (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    return parser


def check_tls_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Mutual TLS is not optional: refuse to start without all three files."""
    missing = [f"--{name}" for name in ("cert", "key", "ca") if getattr(args, name) is None]
    if missing:
        parser.error(
            f"missing {', '.join(missing)}: the API only runs over mutual TLS. Pass --cert and "
            "--key (this appliance's certificate and key, issued by the orchestrator's CA) and "
            "--ca (that CA's certificate)."
        )
    absent = [str(path) for path in (args.cert, args.key, args.ca) if not path.is_file()]
    if absent:
        parser.error(f"not a readable file: {', '.join(absent)}")


class RouterIdFilter(logging.Filter):
    """Stamps each log record with the router id of the applied configuration."""

    def __init__(self, router_id: Callable[[], str | None]) -> None:
        super().__init__()
        self._router_id = router_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.router_id = self._router_id() or "-"
        return True


def build_subsystems(state_dir: Path, firewall: NftablesSubsystem) -> list[Subsystem]:
    """The real data plane, each daemon with its own files under ``state_dir``."""
    return [
        LinksSubsystem(),
        firewall,
        DnsmasqSubsystem(state_dir / "dhcp"),
        RadvdSubsystem(state_dir / "ra"),
        MetadataSubsystem(),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_tls_arguments(parser, args)

    firewall = NftablesSubsystem()
    engine = Engine(build_subsystems(args.state_dir, firewall), args.state_dir, resolve_links)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RouterIdFilter(lambda: engine.current.router_id if engine.current else None))
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    # pyroute2 logs every netlink message at DEBUG: far too much to find the apply steps.
    logging.getLogger("pyroute2").setLevel(logging.INFO)

    try:
        engine.restore()
    except ApplyFailed as exc:
        LOG.error("saved configuration could not be re-applied: %s", exc)

    app = create_app(engine, KernelStatus(firewall.read_counters))
    LOG.info("serving on [%s]:%d with mutual TLS", args.listen, args.port)
    uvicorn.run(
        app,
        host=args.listen,
        port=args.port,
        ssl_certfile=str(args.cert),
        ssl_keyfile=str(args.key),
        ssl_ca_certs=str(args.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        log_config=None,
        access_log=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
