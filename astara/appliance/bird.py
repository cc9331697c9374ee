"""BGP: bird2 announces the router's prefixes to the peers of the document's ``bgp`` section.

Rendering is pure. The prefixes are static routes of bird's own table only (there is no
kernel protocol: bird never touches the appliance's routing tables) and each peer hears those
of its address family, with the router's address on the session as next hop. Nothing is
imported from peers. ``BirdSubsystem`` writes bird.conf atomically and reconfigures the
running bird with SIGHUP (sessions stay up; withdrawn prefixes are withdrawn), starts it on
the first ``bgp`` section and stops it when the section goes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import signal
from pathlib import Path

from astara.appliance.files import PRIVATE_DIR, ensure_dir, write_private
from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.appliance.supervisor import Daemon
from astara.wire.document import ApplianceConfig, Bgp

CONNECT_RETRY_SECONDS = 5


def router_id(config: ApplianceConfig) -> str:
    """BGP identifier: the external IPv4 address, else a stable one derived from the router
    id (an IPv6-only router has no IPv4 address to lend, and bird needs one)."""
    external = config.network("external")
    for address in external.addresses if external else []:
        if address.version == 4:
            return str(address.ip)
    digest = hashlib.sha256(config.router_id.encode()).digest()
    return str(ipaddress.IPv4Address(digest[:4]))


def render_conf(config: ApplianceConfig, bgp: Bgp) -> str:
    """bird.conf announcing ``bgp.prefixes`` to ``bgp.peers``."""
    lines = ["log stderr all;", f"router id {router_id(config)};", "protocol device {}"]
    for version in (4, 6):
        routes = [p for p in bgp.prefixes if p.version == version]
        lines.append(f"protocol static announced{version} {{")
        lines.append(f"\tipv{version};")
        lines += [f"\troute {prefix} unreachable;" for prefix in routes]
        lines.append("}")
    for index, peer in enumerate(bgp.peers):
        version = peer.address.version
        lines += [
            f"protocol bgp peer{index} {{",
            f"\tlocal as {bgp.local_as};",
            f"\tneighbor {peer.address} as {peer.remote_as};",
            # bird waits 120 s by default before trying a refused session again.
            f"\tconnect retry time {CONNECT_RETRY_SECONDS};",
            f"\tipv{version} {{",
            "\t\timport none;",
            f'\t\texport where proto = "announced{version}";',
            "\t\tnext hop self;",
            "\t};",
            "}",
        ]
    return "".join(f"{line}\n" for line in lines)


class BirdSubsystem:
    name = "bgp"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.conf_file = state_dir / "bird.conf"
        self.socket = state_dir / "bird.ctl"
        self.daemon = Daemon(state_dir / "bird.pid", state_dir / "bird.log")

    def argv(self) -> tuple[str, ...]:
        return (
            "bird",
            "-f",
            "-c",
            str(self.conf_file),
            "-s",
            str(self.socket),
            "-P",
            str(self.daemon.pid_file),
        )

    def apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        try:
            self._apply(desired)
        except (OSError, ValueError) as exc:
            raise ApplyStepError(self.name, str(exc)) from exc

    def _apply(self, desired: ApplianceConfig | None) -> None:
        if desired is None or desired.bgp is None:
            self.daemon.stop()  # its sessions close: peers withdraw everything it announced
            return
        # bird keeps root here (started without -u): its files are root's alone.
        ensure_dir(self.state_dir, PRIVATE_DIR)
        changed = write_private(self.conf_file, render_conf(desired, desired.bgp))
        if not self.daemon.ensure(self.argv()) and changed:
            self.daemon.signal(signal.SIGHUP)
