"""NAT element changes as nf_tables netlink messages (the bytes; the kernel's answer is the
functional test's)."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM,
    nft_set_elem_list_msg,
)

from astara.appliance.nat_netlink import batch, packed
from astara.appliance.nftables import SetChange, element_changes, nat_elements
from tests.unit.test_nftables import document, fip

pytestmark = pytest.mark.unit

HEADER = struct.Struct("=IHHI")


def messages(data: bytes) -> list[tuple[int, int, int, Any]]:
    """(type, flags, sequence, decoded element message or None) of each message."""
    found = []
    offset = 0
    while offset < len(data):
        length, kind, flags, sequence = HEADER.unpack_from(data, offset)
        decoded = None
        if kind >> 8 == NFNL_SUBSYS_NFTABLES:
            decoded = nft_set_elem_list_msg(data[offset : offset + length])
            decoded.decode()
        found.append((kind, flags, sequence, decoded))
        offset += length
    return found


def elements(msg: Any) -> list[dict[str, bytes]]:
    return [
        {name: value.get_attr("NFTA_DATA_VALUE") for name, value in elem["attrs"]}
        for elem in msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    ]


def test_keys_and_values_take_the_kernels_register_layout() -> None:
    address = socket.inet_aton("172.24.4.9")
    assert packed("172.24.4.9") == (address, address)
    assert packed("172.24.4.9 . 80-90") == (address + b"\0\x50\0\0", address + b"\0\x5a\0\0")
    value = socket.inet_aton("10.0.0.5") + b"\x1f\x90\0\0"  # port 8080, padded to 4 bytes
    assert packed("10.0.0.5 . 8080") == (value, value)


def test_one_transaction_of_acknowledged_messages_deletions_first() -> None:
    old = nat_elements(document(floating_ips=[fip("172.24.0.10", "10.0.0.5")]))
    new = nat_elements(document(floating_ips=[fip("172.24.0.10", "10.0.0.6")]))
    data, acked = batch(element_changes(old, new), 40)
    found = messages(data)
    assert [kind for kind, *_ in found] == [
        0x10,
        *[NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELSETELEM] * 4,
        *[NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM] * 4,
        0x11,
    ]
    assert [seq for *_, seq, _ in found] == list(range(40, 50))
    assert acked == list(range(41, 49))
    assert all(flags & NLM_F_ACK for _, flags, _, msg in found if msg is not None)
    assert [bool(flags & NLM_F_CREATE) for _, flags, _, msg in found[1:-1]] == 4 * [False] + 4 * [
        True
    ]
    dnat_add = found[5][3]
    assert dnat_add.get_attr("NFTA_SET_ELEM_LIST_TABLE") == "astara_nat"
    assert dnat_add.get_attr("NFTA_SET_ELEM_LIST_SET") == "fip_dnat"
    assert elements(dnat_add) == [
        {
            "NFTA_SET_ELEM_KEY": socket.inet_aton("172.24.0.10"),
            "NFTA_SET_ELEM_DATA": socket.inet_aton("10.0.0.6"),
        }
    ]
    # A deletion names the key only.
    assert elements(found[1][3]) == [{"NFTA_SET_ELEM_KEY": socket.inet_aton("172.24.0.10")}]


def test_interval_sets_get_a_last_key_even_for_a_single_port() -> None:
    changes = [
        SetChange(
            True,
            "pf_tcp",
            ("1.2.3.4 . 22", "1.2.3.4 . 80-90"),
            ("10.0.0.5 . 2222", "10.0.0.5 . 80"),
        ),
        SetChange(True, "pf_tcp_keys", ("1.2.3.4 . 22",)),
        SetChange(True, "fip_dnat_keys", ("1.2.3.4",)),
    ]
    found = messages(batch(changes, 1)[0])
    ip = socket.inet_aton("1.2.3.4")
    single, ranged = elements(found[1][3])
    assert single["NFTA_SET_ELEM_KEY_END"] == single["NFTA_SET_ELEM_KEY"] == ip + b"\0\x16\0\0"
    assert ranged["NFTA_SET_ELEM_KEY_END"] == ip + b"\0\x5a\0\0"
    assert "NFTA_SET_ELEM_KEY_END" in elements(found[2][3])[0]
    assert elements(found[3][3]) == [{"NFTA_SET_ELEM_KEY": ip}]  # a plain set: no last key
