"""``astara-appliance-firstboot``: from the config drive to a startable appliance, at each boot.

Nova puts the orchestrator's first-boot document (``astara.wire.bootstrap.Bootstrap``) on the
config drive. This command mounts the drive read-only (found by its label, whatever bus it
is on), validates the document, writes the TLS credentials and the heartbeat key (directory
0700, files 0600, each replaced in one rename), brings the management NIC (found by MAC) up
with its address (IPv6 without duplicate address detection, so the API can bind at once),
and writes last the environment file ``astara-appliance.service`` starts from. A missing or
invalid document is an error on the console and a non-zero exit: the unit fails, and the
appliance does not start with half a configuration (the environment file of an earlier boot
is removed first). Running it again changes nothing, so every boot runs it.

``plan()`` is the pure part: the document in, the files, the link settings and the
appliance's arguments out.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from astara.wire.bootstrap import (
    CONFIG_DRIVE_LABEL,
    MAX_BOOTSTRAP_BYTES,
    USER_DATA_PATH,
    Bootstrap,
)

DEFAULT_ETC_DIR = Path("/etc/astara")
DEFAULT_STATE_DIR = Path("/var/lib/astara-appliance")
DEFAULT_WAIT = 30.0
ENV_FILE = "appliance.env"
ENV_VARIABLE = "ASTARA_APPLIANCE_ARGS"
IFA_F_NODAD = 0x02
RTPROT_STATIC = 4
# What a word of the unit's unquoted $ASTARA_APPLIANCE_ARGS may hold: no whitespace, quote,
# backslash or $ (systemd would split or expand them).
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.:/\[\]@%+=,-]+$")


class FirstbootError(RuntimeError):
    """Why the appliance cannot start; printed on the console as it is."""


@dataclass(frozen=True)
class FileToWrite:
    path: Path
    content: bytes
    mode: int


@dataclass(frozen=True)
class LinkPlan:
    mac: str
    address: str
    prefixlen: int
    # Set when the orchestrator is beyond the management subnet: a default route via the
    # management NIC, which astara-appliance moves into its management routing domain
    # (astara.appliance.management) before it listens, so tenant routes never see it.
    gateway: str | None


@dataclass(frozen=True)
class Plan:
    directory: Path
    files: tuple[FileToWrite, ...]
    link: LinkPlan
    argv: tuple[str, ...]
    env_file: FileToWrite


def load_bootstrap(data: bytes) -> Bootstrap:
    """The validated document, or FirstbootError naming every problem by its path (never
    echoing a value: the document holds a private key)."""
    if len(data) > MAX_BOOTSTRAP_BYTES:
        raise FirstbootError(
            f"{USER_DATA_PATH} is {len(data)} bytes, more than the {MAX_BOOTSTRAP_BYTES} "
            "a bootstrap document may have"
        )
    if not data.strip():
        raise FirstbootError(f"{USER_DATA_PATH} is empty: the server was booted without user data")
    try:
        return Bootstrap.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise FirstbootError(
            f"{USER_DATA_PATH} is not a valid bootstrap document: {problems}"
        ) from None


def plan(bootstrap: Bootstrap, etc_dir: Path, state_dir: Path) -> Plan:
    """What to write and configure for ``bootstrap``, and how astara-appliance is started."""
    tls = etc_dir / "tls"
    ca, cert, key = tls / "ca.pem", tls / "appliance.pem", tls / "appliance.key"
    files = [
        FileToWrite(ca, bootstrap.ca_pem.encode(), 0o600),
        FileToWrite(cert, bootstrap.cert_pem.encode(), 0o600),
        FileToWrite(key, bootstrap.key_pem.get_secret_value().encode(), 0o600),
    ]
    address = bootstrap.management.address
    argv = [
        "--listen",
        str(address.ip),
        "--port",
        str(bootstrap.api_port),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--ca",
        str(ca),
        "--state-dir",
        str(state_dir),
        "--instance-id",
        bootstrap.instance_id,
        "--set-hostname",  # a VM: its name is its own
    ]
    beat = bootstrap.heartbeat
    if beat is not None:
        key_file = etc_dir / "heartbeat.key"
        files.append(FileToWrite(key_file, beat.key_hex.get_secret_value().encode(), 0o600))
        host = beat.host.compressed
        target = f"[{host}]:{beat.port}" if beat.host.version == 6 else f"{host}:{beat.port}"
        argv += [
            "--heartbeat",
            target,
            "--heartbeat-key-file",
            str(key_file),
            "--heartbeat-interval",
            str(beat.interval),
            "--drift-check-interval",
            str(beat.drift_check_interval),
        ]
    gateway = bootstrap.management.gateway
    link = LinkPlan(
        mac=bootstrap.management.mac,
        address=str(address.ip),
        prefixlen=address.network.prefixlen,
        gateway=str(gateway) if gateway is not None else None,
    )
    env = FileToWrite(etc_dir / ENV_FILE, render_environment(argv), 0o600)
    return Plan(etc_dir, tuple(files), link, tuple(argv), env)


def render_environment(argv: Sequence[str]) -> bytes:
    """The systemd EnvironmentFile line; the unit expands it unquoted, so no word may hold
    whitespace or quotes (none does: addresses, numbers, our own paths, the checked id)."""
    for word in argv:
        if not _PLAIN_WORD.match(word):
            raise FirstbootError(f"argument {word!r} cannot be passed through the environment")
    return f"{ENV_VARIABLE}={' '.join(argv)}\n".encode()


# --- the edges: the config drive, files, and the NIC -------------------------------------


def find_config_drive(label: str, wait: float) -> str:
    """The device holding the filesystem labelled ``label`` (blkid scans every block device;
    the image has no udev to make /dev/disk/by-label), waiting for slow drivers."""
    deadline = time.monotonic() + wait
    while True:
        found = subprocess.run(
            ["blkid", "--label", label], capture_output=True, text=True, check=False
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
        if time.monotonic() > deadline:
            raise FirstbootError(
                f"no config drive: no filesystem labelled {label!r} after {wait:.0f} s "
                "(boot the server with a config drive: Nova's --config-drive true, or the image "
                "property img_config_drive=mandatory)"
            )
        time.sleep(0.2)


@contextlib.contextmanager
def mounted(device: str) -> Iterator[Path]:
    """``device`` mounted read-only on a fresh directory under /run, unmounted on exit."""
    run = Path("/run/astara")
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="config-drive-", dir=run))
    done = subprocess.run(
        ["mount", "-o", "ro,nosuid,nodev,noexec", device, str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        where.rmdir()
        raise FirstbootError(f"cannot mount the config drive {device}: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


def read_user_data(root: Path) -> bytes:
    path = root / USER_DATA_PATH
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_BOOTSTRAP_BYTES + 1)
    except FileNotFoundError:
        raise FirstbootError(
            f"the config drive has no {USER_DATA_PATH}: the server was booted without user data"
        ) from None


def write_private(item: FileToWrite) -> None:
    """Replace the file in one rename; it is created with its final mode, never wider."""
    tmp = item.path.with_name(f".{item.path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, item.mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(item.content)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, item.mode)
    os.replace(tmp, item.path)


def write_files(result: Plan) -> None:
    for directory in {result.directory, *(f.path.parent for f in result.files)}:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    for item in result.files:
        write_private(item)


def configure_link(link: LinkPlan) -> str:
    """Bring the management NIC up with its address; return its name. Idempotent."""
    from pyroute2 import IPRoute  # imported here: the pure part above needs no netlink

    with IPRoute() as ipr:
        found = ipr.link_lookup(address=link.mac)
        if not found:
            raise FirstbootError(f"management NIC: no interface has MAC {link.mac}")
        index = found[0]
        ifname = ipr.get_links(index)[0].get_attr("IFLA_IFNAME")
        ipr.link("set", index=index, state="up")
        version = ipaddress.ip_address(link.address).version
        flags = IFA_F_NODAD if version == 6 else 0
        ipr.addr(
            "replace", index=index, address=link.address, prefixlen=link.prefixlen, flags=flags
        )
        if link.gateway is not None:
            ipr.route(
                "replace",
                dst="default",
                gateway=link.gateway,
                oif=index,
                proto=RTPROT_STATIC,
                family=10 if version == 6 else 2,
            )
    return ifname


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astara-appliance-firstboot",
        description=(
            "Run at every boot of an appliance image (astara-appliance-firstboot.service): read "
            "the bootstrap document from the config drive's openstack/latest/user_data, write "
            "the TLS credentials and heartbeat key, bring the management NIC up with its "
            "address, and write the arguments astara-appliance.service starts with. Fails, "
            "and the appliance does not start, when the drive or a valid document is missing."
        ),
    )
    parser.add_argument(
        "--label",
        default=CONFIG_DRIVE_LABEL,
        help="the config drive's filesystem label (default: %(default)s)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help="how long to wait for the config drive to appear (default: %(default)s)",
    )
    parser.add_argument(
        "--etc-dir",
        type=Path,
        default=DEFAULT_ETC_DIR,
        help="where the credentials and the environment file go (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="astara-appliance's --state-dir (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env_file = args.etc_dir / ENV_FILE
    try:
        # An earlier boot's arguments must not start the appliance if this boot fails.
        env_file.unlink(missing_ok=True)
        device = find_config_drive(args.label, args.wait)
        with mounted(device) as root:
            data = read_user_data(root)
        bootstrap = load_bootstrap(data)
        result = plan(bootstrap, args.etc_dir, args.state_dir)
        write_files(result)
        ifname = configure_link(result.link)
        write_private(result.env_file)
    except FirstbootError as exc:
        print(f"astara-appliance-firstboot: ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"astara-appliance-firstboot: instance {bootstrap.instance_id}: management "
        f"{result.link.address}/{result.link.prefixlen} on {ifname}, API port "
        f"{bootstrap.api_port}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
