"""The live-state fingerprint behind drift detection: what counts as a change and what not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.status import (
    KernelLiveState,
    LiveState,
    running_daemons,
    table_fingerprint,
)

pytestmark = pytest.mark.unit

TABLES = ("inet astara_filter", "ip astara_nat")


def filter_listing(rules: list[str], handle: int = 1, packets: int = 0) -> dict[str, Any]:
    """A small ``nft -j list table inet astara_filter`` answer."""
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "astara_filter", "handle": handle}},
    ]
    for index, comment in enumerate(rules):
        items.append(
            {
                "rule": {
                    "family": "inet",
                    "table": "astara_filter",
                    "chain": "forward",
                    "handle": handle + 10 + index,
                    "comment": comment,
                    "expr": [{"counter": {"packets": packets, "bytes": packets * 60}}],
                }
            }
        )
    return {"nftables": items}


def nat_listing(elements: list[str], handle: int = 1) -> dict[str, Any]:
    """A small ``nft -j list table ip astara_nat`` answer: one map."""
    return {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "astara_nat", "handle": handle}},
            {
                "map": {
                    "family": "ip",
                    "table": "astara_nat",
                    "name": "fip_dnat",
                    "handle": handle + 2,
                    "elem": [[key, "10.0.0.5"] for key in elements],
                }
            },
        ]
    }


def test_counters_handles_and_nft_version_do_not_count() -> None:
    before = table_fingerprint(filter_listing(["a", "b"]))
    after = filter_listing(["a", "b"], handle=40, packets=7)
    after["nftables"][0]["metainfo"]["version"] = "1.0.9"
    assert before == table_fingerprint(after)


def test_element_order_does_not_count_but_rule_order_does() -> None:
    base = table_fingerprint(nat_listing(["1.1.1.1", "2.2.2.2"]))
    assert base == table_fingerprint(nat_listing(["2.2.2.2", "1.1.1.1"]))
    rules = table_fingerprint(filter_listing(["a", "b"]))
    assert rules != table_fingerprint(filter_listing(["b", "a"]))


def test_flushed_rules_or_elements_change_the_fingerprint() -> None:
    assert table_fingerprint(filter_listing(["a", "b"])) != table_fingerprint(filter_listing([]))
    assert table_fingerprint(nat_listing(["1.1.1.1"])) != table_fingerprint(nat_listing([]))


class FakeTables:
    """nft's listings of our two tables, and the writer's count of writes to each."""

    def __init__(self) -> None:
        self.listings = {
            "table inet astara_filter": filter_listing(["a"]),
            "table ip astara_nat": nat_listing(["1.1.1.1"]),
        }
        self.listed: list[str] = []
        self.writes = dict.fromkeys(TABLES, 0)

    def list_json(self, what: str) -> dict[str, Any]:
        self.listed.append(what)
        return self.listings[what]

    def versions(self) -> dict[str, int]:
        return dict(self.writes)


def test_a_read_since_an_earlier_one_lists_only_the_tables_written_since(tmp_path: Path) -> None:
    nft = FakeTables()
    probe = KernelLiveState(nft.list_json, TABLES, tmp_path, nft.versions)
    base = probe.read({})
    assert sorted(nft.listed) == ["table inet astara_filter", "table ip astara_nat"]
    nft.listings["table ip astara_nat"] = nat_listing(["1.1.1.1", "2.2.2.2"])
    nft.writes["ip astara_nat"] += 1
    nft.listed = []
    after = probe.read({}, base)
    assert nft.listed == ["table ip astara_nat"]
    assert after == probe.read({}) != base
    # Nothing written since: nothing listed; a read without an earlier one lists everything.
    nft.listed = []
    assert probe.read({}, after) == after and nft.listed == []
    assert probe.read({}) == after and len(nft.listed) == 2


def test_a_table_without_a_writer_count_is_always_listed_again(tmp_path: Path) -> None:
    nft = FakeTables()
    probe = KernelLiveState(nft.list_json, TABLES, tmp_path, lambda: {})
    base = probe.read({})
    nft.listed = []
    assert probe.read({}, base) == base and len(nft.listed) == 2


def test_live_states_compare_whatever_order_they_were_read_in() -> None:
    def state(addresses: tuple[str, ...]) -> LiveState:
        return LiveState(frozenset(addresses), frozenset(), (), frozenset())

    assert state(("eth1 10.1.0.1/24", "eth0 fdca::5/64")) == state(
        ("eth0 fdca::5/64", "eth1 10.1.0.1/24")
    )
    assert state(("eth0 fdca::5/64",)) != state(("eth0 fdca::5/64", "eth1 10.1.0.1/24"))


def test_running_daemons_lists_live_pid_files_only(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "dhcp").mkdir()
    (tmp_path / "dhcp" / "dnsmasq-n1.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "radvd.pid").write_text(f"{dead.pid}\n")
    (tmp_path / "garbage.pid").write_text("not a pid")
    assert running_daemons(tmp_path) == (f"dhcp/dnsmasq-n1.pid={os.getpid()}",)
    assert running_daemons(tmp_path / "absent") == ()
