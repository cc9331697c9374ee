"""The live-state fingerprint behind drift detection: what counts as a change and what not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.status import LiveState, live_digest, ruleset_fingerprint, running_daemons

pytestmark = pytest.mark.unit

TABLES = ("inet astara_filter", "ip astara_nat")


def listing(
    rules: list[str], elements: list[str], handle: int = 1, packets: int = 0
) -> dict[str, Any]:
    """A small ``nft -j list ruleset`` answer: our filter table, our NAT map, someone else's."""
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "astara_filter", "handle": handle}},
        {"table": {"family": "inet", "name": "other", "handle": handle + 1}},
        {"rule": {"family": "inet", "table": "other", "chain": "c", "handle": 99, "expr": []}},
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


def test_counters_and_handles_do_not_count() -> None:
    before = ruleset_fingerprint(listing(["a", "b"], ["1.1.1.1"]), TABLES)
    after = ruleset_fingerprint(listing(["a", "b"], ["1.1.1.1"], handle=40, packets=7), TABLES)
    assert before == after


def test_element_order_does_not_count_but_rule_order_does() -> None:
    base = ruleset_fingerprint(listing(["a", "b"], ["1.1.1.1", "2.2.2.2"]), TABLES)
    assert base == ruleset_fingerprint(listing(["a", "b"], ["2.2.2.2", "1.1.1.1"]), TABLES)
    assert base != ruleset_fingerprint(listing(["b", "a"], ["1.1.1.1", "2.2.2.2"]), TABLES)


def test_flushed_rules_or_elements_change_the_fingerprint() -> None:
    base = ruleset_fingerprint(listing(["a", "b"], ["1.1.1.1"]), TABLES)
    assert base != ruleset_fingerprint(listing([], ["1.1.1.1"]), TABLES)
    assert base != ruleset_fingerprint(listing(["a", "b"], []), TABLES)


def test_other_tables_are_not_ours() -> None:
    ours = listing(["a"], [])
    theirs = listing(["a"], [])
    theirs["nftables"][3]["rule"]["expr"] = [{"accept": None}]
    assert ruleset_fingerprint(ours, TABLES) == ruleset_fingerprint(theirs, TABLES)
    assert ruleset_fingerprint({"nftables": []}, TABLES) != ruleset_fingerprint(ours, TABLES)


def state(**changes: Any) -> LiveState:
    base: dict[str, Any] = {
        "addresses": ("eth1 10.1.0.1/24", "eth0 fdca::5/64"),
        "routes": ("default/0 via 172.24.4.1 dev eth1 proto 78",),
        "ruleset": "[]",
        "daemons": ("dhcp/dnsmasq-n1.pid=42",),
    }
    base.update(changes)
    return LiveState(**base)


def test_live_digest_ignores_read_order_and_sees_every_part() -> None:
    digest = live_digest(state())
    assert digest == live_digest(state(addresses=("eth0 fdca::5/64", "eth1 10.1.0.1/24")))
    for change in (
        {"addresses": ("eth0 fdca::5/64",)},
        {"routes": ()},
        {"ruleset": "[{}]"},
        {"daemons": ("dhcp/dnsmasq-n1.pid=43",)},
    ):
        assert live_digest(state(**change)) != digest


def test_running_daemons_lists_live_pid_files_only(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "dhcp").mkdir()
    (tmp_path / "dhcp" / "dnsmasq-n1.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "radvd.pid").write_text(f"{dead.pid}\n")
    (tmp_path / "garbage.pid").write_text("not a pid")
    assert running_daemons(tmp_path) == (f"dhcp/dnsmasq-n1.pid={os.getpid()}",)
    assert running_daemons(tmp_path / "absent") == ()
