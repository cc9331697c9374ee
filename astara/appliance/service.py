"""``astara-appliance``: the agent inside a router appliance.

Re-applies the last good configuration (so a rebooted appliance routes before the orchestrator
speaks again), then serves the API over HTTPS, accepting only clients whose certificate the
orchestrator's CA issued. With ``--heartbeat`` it also sends signed UDP heartbeats to the
orchestrator.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from pyroute2.netlink.exceptions import NetlinkError

from astara.appliance.api import DEFAULT_API_THREADS, DEFAULT_MAX_BODY_BYTES, create_app
from astara.appliance.bird import BirdSubsystem
from astara.appliance.conntrack import ConntrackSubsystem
from astara.appliance.credentials import TlsIdentity
from astara.appliance.dnsmasq import DEFAULT_USER as DNSMASQ_USER
from astara.appliance.dnsmasq import DnsmasqSubsystem
from astara.appliance.engine import ApplyFailed, Engine
from astara.appliance.files import TRAVERSABLE_DIR, ensure_dir
from astara.appliance.heartbeat import DriftWatch, HeartbeatSender
from astara.appliance.hostname import HostnameSubsystem
from astara.appliance.management import MANAGEMENT_TABLE, IpAddress, ManagementDomain
from astara.appliance.metadata import MetadataSubsystem
from astara.appliance.nat_netlink import NetlinkElements
from astara.appliance.netlink import LinksSubsystem, resolve_links
from astara.appliance.nftables import TABLES, NftablesSubsystem
from astara.appliance.radvd import RadvdSubsystem
from astara.appliance.status import KernelLiveState, KernelStatus
from astara.appliance.subsystem import Subsystem
from astara.appliance.supervisor import become_subreaper
from astara.wire.defaults import API_PORT
from astara.wire.heartbeat import DEFAULT_DRIFT_CHECK_INTERVAL, DEFAULT_INTERVAL, MAX_ID_BYTES

LOG = logging.getLogger("astara.appliance")

DEFAULT_STATE_DIR = Path("/var/lib/astara-appliance")
DEFAULT_LINK_WAIT = 15.0  # Nova's hot-plugged NICs appear in the guest within a few seconds
MAX_LINK_WAIT = 120.0  # the orchestrator gives up on an apply after a minute anyway
MAX_PORT = 65535
MAX_API_THREADS = 256
MAX_HEARTBEAT_INTERVAL = 60.0
MAX_DRIFT_CHECK_INTERVAL = 3600.0
LOG_FORMAT = "%(asctime)s %(levelname)s [router %(router_id)s] %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astara-appliance",
        description=(
            "Astara router appliance agent: serves the configuration API over HTTPS with "
            "mutual TLS and applies each configuration to this network namespace or host "
            "(addresses, nftables, dnsmasq, radvd, bird, metadata proxy)."
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
    beats = parser.add_argument_group(
        "heartbeats",
        "Signed UDP heartbeats to the orchestrator; --heartbeat needs --instance-id and "
        "--heartbeat-key-file.",
    )
    beats.add_argument(
        "--instance-id", metavar="ID", help="this instance's id, as the orchestrator knows it"
    )
    beats.add_argument(
        "--heartbeat",
        type=parse_target,
        metavar="HOST:PORT",
        help="where to send heartbeats, e.g. 192.0.2.1:5555 or [fdca::1]:5555",
    )
    beats.add_argument(
        "--heartbeat-key-file",
        type=Path,
        metavar="PATH",
        help="the HMAC key: the file's raw bytes, or hex text (decoded when the whole file, "
        "trailing newline aside, is hex digits)",
    )
    beats.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="(default: %(default)s)",
    )
    beats.add_argument(
        "--drift-check-interval",
        type=float,
        default=DEFAULT_DRIFT_CHECK_INTERVAL,
        metavar="SECONDS",
        help="how often the live state is compared with what the last apply produced; "
        "heartbeats carry the verdict (default: %(default)s)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="BYTES",
        help="larger request bodies are refused with 413 before they are read "
        "(default: %(default)s; a document with 1,000 floating IPs and 5,000 firewall rules "
        "is about 1.5 MB)",
    )
    limits.add_argument(
        "--api-threads",
        type=int,
        default=DEFAULT_API_THREADS,
        metavar="N",
        help="requests served at once; others wait (default: %(default)s)",
    )
    parser.add_argument(
        "--link-wait",
        type=float,
        default=DEFAULT_LINK_WAIT,
        metavar="SECONDS",
        help="how long an apply waits for a NIC of the document to appear, as a NIC "
        "hot-plugged into a VM does a moment after it is attached (default: %(default)s)",
    )
    parser.add_argument(
        "--set-hostname",
        action="store_true",
        help="set the kernel's hostname to the document's; for an appliance with a UTS "
        "namespace of its own (a VM), never one sharing its host's (the netns provider)",
    )
    parser.add_argument(
        "--dnsmasq-user",
        default=DNSMASQ_USER,
        metavar="USER",
        help="the account dnsmasq drops to; its files are readable by it alone "
        "(default: %(default)s)",
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


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) -> (host, port); argparse reports errors."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host.split("%")[0])  # brackets only make sense around IPv6
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: put an IPv6 address in brackets")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def read_key(path: Path) -> bytes:
    """The key in ``path``: hex text is decoded, anything else is taken as raw bytes."""
    raw = path.read_bytes()
    try:
        return bytes.fromhex(raw.decode("ascii").strip())
    except ValueError:
        return raw


@dataclass(frozen=True)
class HeartbeatSettings:
    instance_id: str
    target: tuple[str, int]
    key: bytes
    interval: float
    drift_check_interval: float


def heartbeat_settings(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> HeartbeatSettings | None:
    """What --heartbeat and its companions ask for; parser.error() when they do not fit."""
    if args.heartbeat is None:
        return None
    missing = [
        flag
        for flag, value in (
            ("--instance-id", args.instance_id),
            ("--heartbeat-key-file", args.heartbeat_key_file),
        )
        if value is None
    ]
    if missing:
        parser.error(f"--heartbeat needs {' and '.join(missing)}")
    if not 0 < len(args.instance_id.encode()) <= MAX_ID_BYTES:
        parser.error(f"--instance-id must be 1 to {MAX_ID_BYTES} bytes")
    # Upper bounds as the first-boot document has them: a sleep of 1e308 s ends the thread.
    if not 0 < args.heartbeat_interval <= MAX_HEARTBEAT_INTERVAL:
        parser.error(f"--heartbeat-interval must be above 0 and at most {MAX_HEARTBEAT_INTERVAL}")
    if not 0 < args.drift_check_interval <= MAX_DRIFT_CHECK_INTERVAL:
        parser.error(
            f"--drift-check-interval must be above 0 and at most {MAX_DRIFT_CHECK_INTERVAL}"
        )
    try:
        key = read_key(args.heartbeat_key_file)
    except OSError as exc:
        parser.error(f"cannot read --heartbeat-key-file: {exc}")
    if not key:
        parser.error(f"--heartbeat-key-file {args.heartbeat_key_file} is empty")
    return HeartbeatSettings(
        args.instance_id, args.heartbeat, key, args.heartbeat_interval, args.drift_check_interval
    )


class RouterIdFilter(logging.Filter):
    """Stamps each log record with the router id of the applied configuration."""

    def __init__(self, router_id: Callable[[], str | None]) -> None:
        super().__init__()
        self._router_id = router_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.router_id = self._router_id() or "-"
        return True


def build_subsystems(
    state_dir: Path,
    firewall: NftablesSubsystem,
    management: ManagementDomain,
    dnsmasq_user: str = DNSMASQ_USER,
    set_hostname: bool = False,
) -> list[Subsystem]:
    """The real data plane, each daemon with its own files under ``state_dir``."""
    subsystems: list[Subsystem] = [
        LinksSubsystem(management=management),
        firewall,
        ConntrackSubsystem(),
        DnsmasqSubsystem(state_dir / "dhcp", user=dnsmasq_user),
        RadvdSubsystem(state_dir / "ra"),
        BirdSubsystem(state_dir / "bgp"),
        MetadataSubsystem(),
    ]
    if set_hostname:
        subsystems.append(HostnameSubsystem())
    return subsystems


def check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.port <= MAX_PORT:
        parser.error(f"--port must be 1 to {MAX_PORT}")
    if args.max_body_bytes < 1:
        parser.error("--max-body-bytes must be positive")
    if not 0 < args.api_threads <= MAX_API_THREADS:
        parser.error(f"--api-threads must be 1 to {MAX_API_THREADS}")
    if not 0 <= args.link_wait <= MAX_LINK_WAIT:
        parser.error(f"--link-wait must be 0 to {MAX_LINK_WAIT} seconds")


def management_destinations(beats: HeartbeatSettings | None) -> list[IpAddress]:
    """Hosts only reached over management: the heartbeat target (when given as an address)."""
    if beats is None:
        return []
    try:
        return [ipaddress.ip_address(beats.target[0].split("%")[0])]
    except ValueError:
        return []


def set_up_management(domain: ManagementDomain, listen: str) -> None:
    """The management routing domain, before anything listens or sends: from the interface
    that holds the --listen address (the provider or first boot configured it)."""
    if ipaddress.ip_address(listen).is_unspecified:
        LOG.warning("--listen %s: the management domain waits for the first document", listen)
        return
    ifname = domain.interface_holding(listen)
    if ifname is None:
        LOG.warning("no interface holds %s: the management domain waits for a document", listen)
        return
    domain.ensure(ifname, domain.addresses(ifname))
    LOG.info("management routing domain on %s (table %d)", ifname, MANAGEMENT_TABLE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_tls_arguments(parser, args)
    identity = TlsIdentity(args.cert, args.key, args.ca, args.listen)
    identity.finish_pending()  # a replacement a crash interrupted
    check_limits(parser, args)
    beats = heartbeat_settings(parser, args)
    # Everything written from now on (ours and our daemons') is private unless made otherwise.
    os.umask(0o077)
    ensure_dir(args.state_dir, TRAVERSABLE_DIR)
    become_subreaper()

    # NAT element changes straight over netlink: libnftables would first fetch every set.
    firewall = NftablesSubsystem(elements=NetlinkElements())
    management = ManagementDomain(management_destinations(beats))
    engine = Engine(
        build_subsystems(
            args.state_dir, firewall, management, args.dnsmasq_user, args.set_hostname
        ),
        args.state_dir,
        resolve_links,
        KernelLiveState(firewall.runner.list_json, TABLES, args.state_dir, firewall.versions),
        link_wait=args.link_wait,
    )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RouterIdFilter(lambda: engine.current.router_id if engine.current else None))
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    # pyroute2 logs every netlink message at DEBUG: far too much to find the apply steps.
    logging.getLogger("pyroute2").setLevel(logging.INFO)

    try:
        set_up_management(management, args.listen)
    except (OSError, LookupError, NetlinkError) as exc:
        LOG.error("management routing domain not set up: %s", exc)
    try:
        engine.restore()
    except ApplyFailed as exc:
        LOG.error("saved configuration could not be re-applied: %s", exc)

    if beats is not None:
        # Started after the restore: the first beat already reports what is applied.
        reported = DriftWatch(engine.running_state, engine.drift, beats.drift_check_interval)
        HeartbeatSender(
            beats.instance_id, beats.key, beats.target, reported.running_state, beats.interval
        ).start()
        LOG.info("heartbeats every %.1f s to %s port %d", beats.interval, *beats.target)

    app = create_app(
        engine,
        KernelStatus(firewall.read_counters, engine.ports),
        max_body_bytes=args.max_body_bytes,
        threads=args.api_threads,
        identity=identity,
    )
    LOG.info("serving on [%s]:%d with mutual TLS", args.listen, args.port)
    server = uvicorn.Config(
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
    server.load()
    identity.context = server.ssl  # PUT /v1/credentials loads new ones into it
    uvicorn.Server(server).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
