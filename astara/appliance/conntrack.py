"""Ending connections whose address translation went away (Subsystem "conntrack").

The kernel keeps translating a tracked connection the way it was set up, whatever the NAT
maps say now: without this, a floating IP moved to another VM would keep carrying the old
VM's established connections, and a VM whose floating IP was removed would keep talking to
the outside through it. After the packet filter is applied, the connections translated by a
mapping that is gone or changed are deleted from the connection tracking table (their next
packet is judged afresh by the new rules). Which ones is decided by ``stale_translations``, a
pure function of the two documents; ``KernelConntrack`` only dumps and deletes, with
pyroute2's conntrack netlink client, the kernel filtering on the original direction's
addresses.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from astara.appliance.nftables import external_v4
from astara.appliance.subsystem import LinkMap
from astara.wire.document import ApplianceConfig, PortForward

LOG = logging.getLogger(__name__)

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass(frozen=True)
class Cut:
    """Connections to delete: those whose original direction has ``source``/``destination``
    (and ``protocol``, a destination port in ``ports``) and, when ``translated_to`` is set,
    whose replies go to that address (the source NAT rewrote them to it)."""

    source: str | None = None
    destination: str | None = None
    protocol: int | None = None
    ports: tuple[int, int] | None = None
    translated_to: str | None = None

    def matches(self, destination_port: int | None, reply_destination: str | None) -> bool:
        """Whether a connection the kernel's filter on the original direction returned is
        one to delete."""
        if self.ports is not None and (
            destination_port is None or not self.ports[0] <= destination_port <= self.ports[1]
        ):
            return False
        return self.translated_to is None or reply_destination == self.translated_to


def _forward_key(forward: PortForward) -> tuple[object, ...]:
    """What a port forward translates, its id aside (an id is Neutron's, not the kernel's)."""
    ext, internal = forward.external_port, forward.internal_port
    return (
        forward.external_ip,
        forward.protocol,
        (ext.first, ext.last),
        forward.internal_ip,
        (internal.first, internal.last),
    )


def stale_translations(previous: ApplianceConfig, desired: ApplianceConfig | None) -> list[Cut]:
    """The connections to end when ``desired`` replaces ``previous`` (None: everything goes).

    A floating IP removed or moved to another fixed IP: connections to it from outside, and
    those of its old fixed IP that went out through it. A port forward removed or changed:
    connections to its external address and ports. The router's external IPv4 address
    changed, or its source NAT turned off: connections that went out through the old address.
    """
    cuts: list[Cut] = []
    # As integers: an address object hashes through its hex text, slow for thousands of them.
    kept_fips = (
        {(int(f.floating_ip), int(f.fixed_ip)) for f in desired.floating_ips} if desired else set()
    )
    for fip in previous.floating_ips:
        if (int(fip.floating_ip), int(fip.fixed_ip)) not in kept_fips:
            floating = str(fip.floating_ip)
            cuts.append(Cut(destination=floating))
            cuts.append(Cut(source=str(fip.fixed_ip), translated_to=floating))
    kept_forwards = {_forward_key(f) for f in desired.port_forwards} if desired else set()
    for forward in previous.port_forwards:
        if _forward_key(forward) not in kept_forwards:
            ports = forward.external_port
            cuts.append(
                Cut(
                    destination=str(forward.external_ip),
                    protocol=PROTOCOLS[forward.protocol],
                    ports=(ports.first, ports.last),
                )
            )
    old_gateway = external_v4(previous) if previous.snat_enabled else None
    new_gateway = external_v4(desired) if desired and desired.snat_enabled else None
    if old_gateway is not None and old_gateway != new_gateway:
        cuts.append(Cut(translated_to=str(old_gateway)))
    return cuts


class ConntrackTable(Protocol):
    def cut(self, cuts: Iterable[Cut]) -> int:
        """Delete the connections ``cuts`` describe; return how many."""
        ...


class KernelConntrack:
    """The connection tracking table of the namespace it runs in, over conntrack netlink."""

    def cut(self, cuts: Iterable[Cut]) -> int:
        deleted = 0
        with Conntrack() as table:
            for cut in cuts:
                wanted = NFCTAttrTuple(saddr=cut.source, daddr=cut.destination, proto=cut.protocol)
                # Read to the end first: pyroute2 cannot delete while a dump is running.
                found = [
                    entry
                    for entry in table.dump_entries(tuple_orig=wanted)
                    if cut.matches(entry.tuple_orig.dport, entry.tuple_reply.daddr)
                ]
                for entry in found:
                    try:
                        table.delete(entry)
                    except (OSError, NetlinkError):  # ended meanwhile
                        continue
                    deleted += 1
        return deleted


class ConntrackSubsystem:
    """Subsystem "conntrack": runs after the packet filter."""

    name = "conntrack"

    def __init__(self, table: ConntrackTable | None = None) -> None:
        self.table = table if table is not None else KernelConntrack()

    def apply(
        self,
        desired: ApplianceConfig | None,
        previous: ApplianceConfig | None,
        links: LinkMap,
    ) -> None:
        # Without a previous document nothing this appliance translated is known to be gone.
        if previous is None:
            return
        cuts = stale_translations(previous, desired)
        if not cuts:
            return
        try:
            deleted = self.table.cut(cuts)
        except (OSError, NetlinkError) as exc:
            # The new rules are in place; what lingers ends with its conntrack timeout. Not a
            # reason to roll a floating IP move back.
            LOG.error("connections of removed translations not ended: %s", exc)
            return
        LOG.info("ended %d connections of %d removed translations", deleted, len(cuts))
