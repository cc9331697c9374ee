"""IPv6 router advertisements: one radvd for all internal interfaces with RA-mode subnets.

Only subnets with an ``ipv6_ra_mode`` are advertised (without one, Neutron's meaning is that
another router sends the RAs). The flags follow the mode: slaac -> autonomous; dhcpv6-stateful
-> managed flag, not autonomous; dhcpv6-stateless -> other-config flag and autonomous.

Withdrawn prefixes: hosts keep a SLAAC address until its valid lifetime ends, so a prefix that
leaves the document is advertised for ``deprecate_seconds`` more with preferred lifetime 0
(hosts stop using it for new connections at once; RFC 4862 lets them keep it two more hours
at most). When radvd stops, ``DeprecatePrefix`` makes its last RA do the same.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from astara.appliance.files import PRIVATE_DIR, ensure_dir, write_private
from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.appliance.supervisor import Daemon
from astara.wire.document import ApplianceConfig, Ipv6Mode

MIN_INTERVAL = 10
MAX_INTERVAL = 30
ROUTER_LIFETIME = 1800
VALID_LIFETIME = 86400
PREFERRED_LIFETIME = 14400
# RFC 4862 5.5.3(e): hosts never cut a valid lifetime below two hours from an RA.
DEPRECATED_VALID_LIFETIME = 7200
# RDNSS must outlive the gap between two RAs (RFC 8106: at least MaxRtrAdvInterval).
RDNSS_LIFETIME = 2 * MAX_INTERVAL
DEFAULT_DEPRECATE_SECONDS = 600.0


@dataclass(frozen=True, order=True)
class RaPrefix:
    cidr: str
    mode: Ipv6Mode


@dataclass(frozen=True)
class RaInterface:
    ifname: str
    prefixes: tuple[RaPrefix, ...]
    rdnss: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()
    mtu: int | None = None  # advertised (RFC 4861 MTU option) when known


def advertised_prefixes(
    config: ApplianceConfig | None, links: LinkMap
) -> dict[str, list[RaPrefix]]:
    """Interface name -> the prefixes we advertise there."""
    found: dict[str, list[RaPrefix]] = {}
    if config is None:
        return found
    for net in config.internal_networks():
        prefixes = [
            RaPrefix(str(s.cidr), s.ipv6_ra_mode)
            for s in net.subnets
            if s.cidr.version == 6 and s.ipv6_ra_mode is not None
        ]
        if prefixes and net.interface_mac in links:
            found[links[net.interface_mac]] = prefixes
    return found


def ra_interfaces(
    config: ApplianceConfig | None, links: LinkMap, deprecated: Iterable[tuple[str, str]] = ()
) -> list[RaInterface]:
    """What radvd advertises; ``deprecated`` holds (interface, prefix) pairs being withdrawn."""
    prefixes = advertised_prefixes(config, links)
    rdnss: dict[str, list[str]] = {}
    mtus: dict[str, int] = {}
    if config is not None:
        for net in config.internal_networks():
            ifname = links.get(net.interface_mac)
            if ifname in prefixes:
                mtus[ifname] = config.mtu(net.interface_mac)
            for subnet in net.subnets:
                if ifname in prefixes and subnet.ipv6_ra_mode is not None:
                    # The router is the network's resolver (it forwards to dns_nameservers).
                    servers = rdnss.setdefault(ifname, [])
                    servers += [str(a.ip) for a in net.addresses if a.ip in subnet.cidr]
    old: dict[str, list[str]] = {}
    for ifname, cidr in sorted(set(deprecated)):
        if cidr not in {p.cidr for p in prefixes.get(ifname, [])}:
            old.setdefault(ifname, []).append(cidr)
    return [
        RaInterface(
            ifname=ifname,
            prefixes=tuple(sorted(prefixes.get(ifname, []))),
            rdnss=tuple(dict.fromkeys(rdnss.get(ifname, []))),
            deprecated=tuple(old.get(ifname, [])),
            mtu=mtus.get(ifname),
        )
        for ifname in sorted(prefixes.keys() | old.keys())
    ]


def _prefix_block(cidr: str, autonomous: bool, preferred: int, valid: int) -> list[str]:
    return [
        f"\tprefix {cidr} {{",
        "\t\tAdvOnLink on;",
        f"\t\tAdvAutonomous {'on' if autonomous else 'off'};",
        f"\t\tAdvValidLifetime {valid};",
        f"\t\tAdvPreferredLifetime {preferred};",
        "\t\tDeprecatePrefix on;",
        "\t};",
    ]


def render_conf(interfaces: Sequence[RaInterface]) -> str:
    """One radvd.conf holding an interface block each."""
    lines: list[str] = []
    for iface in interfaces:
        modes = {p.mode for p in iface.prefixes}
        lines += [
            f"interface {iface.ifname} {{",
            "\tAdvSendAdvert on;",
            "\tIgnoreIfMissing on;",
            f"\tMinRtrAdvInterval {MIN_INTERVAL};",
            f"\tMaxRtrAdvInterval {MAX_INTERVAL};",
            # An interface left with withdrawn prefixes only is no default router any more.
            f"\tAdvDefaultLifetime {ROUTER_LIFETIME if iface.prefixes else 0};",
            f"\tAdvManagedFlag {'on' if 'dhcpv6-stateful' in modes else 'off'};",
            f"\tAdvOtherConfigFlag {'on' if 'dhcpv6-stateless' in modes else 'off'};",
        ]
        if iface.mtu is not None:
            lines.append(f"\tAdvLinkMTU {iface.mtu};")
        for prefix in iface.prefixes:
            autonomous = prefix.mode != "dhcpv6-stateful"
            lines += _prefix_block(prefix.cidr, autonomous, PREFERRED_LIFETIME, VALID_LIFETIME)
        for cidr in iface.deprecated:
            lines += _prefix_block(cidr, True, 0, DEPRECATED_VALID_LIFETIME)
        if iface.rdnss:
            lines += [
                f"\tRDNSS {' '.join(iface.rdnss)} {{",
                f"\t\tAdvRDNSSLifetime {RDNSS_LIFETIME};",
                "\t};",
            ]
        lines.append("};")
    return "".join(f"{line}\n" for line in lines)


class RadvdSubsystem:
    name = "ra"

    def __init__(
        self,
        state_dir: Path,
        deprecate_seconds: float = DEFAULT_DEPRECATE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state_dir = state_dir
        self.deprecate_seconds = deprecate_seconds
        self.clock = clock
        self.conf_file = state_dir / "radvd.conf"
        self.daemon = Daemon(state_dir / "radvd.pid", state_dir / "radvd.log")
        # (interface, prefix) -> when we stop advertising it as deprecated.
        self._withdrawn: dict[tuple[str, str], float] = {}

    def argv(self) -> tuple[str, ...]:
        return (
            "radvd",
            "--nodaemon",
            "-C",
            str(self.conf_file),
            "-p",
            str(self.daemon.pid_file),
            "-m",
            "logfile",
            "-l",
            str(self.daemon.log_file),
        )

    def apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        try:
            self._apply(desired, previous, links)
        except (OSError, ValueError) as exc:
            raise ApplyStepError(self.name, str(exc)) from exc

    def _apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        now = self.clock()
        current = advertised_prefixes(desired, links)
        for ifname, prefixes in advertised_prefixes(previous, links).items():
            for prefix in prefixes:
                if prefix.cidr not in {p.cidr for p in current.get(ifname, [])}:
                    self._withdrawn.setdefault((ifname, prefix.cidr), now + self.deprecate_seconds)
        self._withdrawn = {key: end for key, end in self._withdrawn.items() if end > now}
        if not current:
            # radvd's final RA deprecates every prefix it still announces (DeprecatePrefix).
            self.daemon.stop()
            self._withdrawn.clear()
            return
        # radvd keeps root (it is started without -u): its files are root's alone.
        ensure_dir(self.state_dir, PRIVATE_DIR)
        changed = write_private(
            self.conf_file, render_conf(ra_interfaces(desired, links, self._withdrawn))
        )
        if not self.daemon.ensure(self.argv()) and changed:
            self.daemon.signal(signal.SIGHUP)
