"""NAT map element changes written straight over netlink, in one nf_tables transaction.

Before any ``add element``, libnftables 1.0.6 fetches into its cache the elements of every
interval set in the namespace: with 5,000 firewall rules folded into sets that is ~100 KB and
~3 ms, most of a one-floating-IP change, for maps the kernel updates in a fraction of that.
The NAT maps are Astara's own and of two key shapes only (an IPv4 address, or an address and
a port or port range), so their element messages are built here with pyroute2's nf_tables
message classes and sent as one batch; every message is acknowledged, and the first error
fails the whole batch (the kernel applies none of it).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM,
    nft_set_elem_list_msg,
)

from astara.appliance.netlink import acknowledgements
from astara.appliance.nftables import NAT_MAPS, NAT_TABLE, SetChange, keys_set
from astara.appliance.subsystem import ApplyStepError

NETLINK_NETFILTER = 12
NFPROTO_IPV4 = 2
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
REPLY_TIMEOUT = 5.0  # seconds to wait for the kernel's answer to a batch
_TABLE = NAT_TABLE.split()[1]  # of family "ip": NFPROTO_IPV4
# Interval sets (concatenations with ranges) take every key as a first and a last value, even
# a single one: without the last the kernel's listing pairs neighbouring keys into ranges.
INTERVAL_SETS = frozenset(
    name
    for map_name, declaration in NAT_MAPS.items()
    if "flags interval" in declaration
    for name in (map_name, keys_set(map_name))
)


def packed(text: str) -> tuple[bytes, bytes]:
    """A NAT key or value in nft syntax ("10.0.0.5", "172.24.4.9 . 80-90") as the kernel's
    register layout: each field padded to 4 bytes; the range's first and last values."""
    first, last = b"", b""
    for part in text.split(" . "):
        if "." in part:
            address = socket.inet_aton(part)
            first, last = first + address, last + address
        else:
            low, _, high = part.partition("-")
            first += struct.pack("!H2x", int(low))
            last += struct.pack("!H2x", int(high or low))
    return first, last


def _element(key: str, value: str | None, interval: bool) -> dict[str, Any]:
    first, last = packed(key)
    attrs: list[tuple[str, Any]] = [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", first)]})]
    if interval:
        attrs.append(("NFTA_SET_ELEM_KEY_END", {"attrs": [("NFTA_DATA_VALUE", last)]}))
    if value is not None:
        attrs.append(("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VALUE", packed(value)[0])]}))
    return {"attrs": attrs}


def _message(msg: Any, kind: int, flags: int, sequence: int, family: int, res_id: int) -> bytes:
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = sequence
    msg["nfgen_family"] = family
    msg["res_id"] = res_id
    msg.encode()
    return bytes(msg.data)


def batch(changes: Sequence[SetChange], first_sequence: int) -> tuple[bytes, list[int]]:
    """One transaction's bytes for ``changes``, and the sequence numbers to be acknowledged."""
    data = _message(
        nfgen_msg(), NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_sequence, 0, NFNL_SUBSYS_NFTABLES
    )
    acked = []
    for offset, change in enumerate(changes, start=1):
        values = change.values if change.values is not None else (None,) * len(change.keys)
        msg = nft_set_elem_list_msg()
        msg["attrs"] = [
            ("NFTA_SET_ELEM_LIST_TABLE", _TABLE),
            ("NFTA_SET_ELEM_LIST_SET", change.name),
            (
                "NFTA_SET_ELEM_LIST_ELEMENTS",
                [
                    _element(k, v, change.name in INTERVAL_SETS)
                    for k, v in zip(change.keys, values, strict=True)
                ],
            ),
        ]
        kind, flags = (
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
            if change.add
            else (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        )
        sequence = first_sequence + offset
        data += _message(msg, NFNL_SUBSYS_NFTABLES << 8 | kind, flags, sequence, NFPROTO_IPV4, 0)
        acked.append(sequence)
    end = first_sequence + len(changes) + 1
    data += _message(nfgen_msg(), NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES)
    return data, acked


class NetlinkElements:
    """Writes NAT element changes over one kept nfnetlink socket, in the current namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(REPLY_TIMEOUT)
        self._sequence = 0
        self._lock = threading.Lock()

    def write(self, changes: Sequence[SetChange]) -> None:
        """Apply ``changes`` in one transaction; ApplyStepError (nothing applied) if refused."""
        if not changes:
            return
        with self._lock:
            first = self._sequence + 1
            self._sequence += len(changes) + 2
            data, acked = batch(changes, first)
            try:
                self._sock.send(data)
                self._await(acked, changes)
            except OSError as exc:
                raise ApplyStepError("firewall", f"netlink: {exc}") from exc

    def _await(self, waiting: list[int], changes: Sequence[SetChange]) -> None:
        by_sequence = dict(zip(waiting, changes, strict=True))
        for sequence, code in acknowledgements(self._sock, set(waiting)):
            if code:  # the kernel applied none of the batch
                change = by_sequence[sequence]
                verb = "add to" if change.add else "delete from"
                raise ApplyStepError(
                    "firewall",
                    f"netlink: cannot {verb} {NAT_TABLE} {change.name} "
                    f"({', '.join(change.keys)}): {os.strerror(code)}",
                )

    def close(self) -> None:
        self._sock.close()
