"""The apply engine's ordering, generations, rollback and persistence.

The subsystems here are test doubles that record their calls (RecordingSubsystem): these tests
are about the engine's decisions, not about any data plane.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.engine import (
    APPLY_ORDER,
    ApplyFailed,
    Engine,
    NothingApplied,
    StaleGeneration,
)
from astara.appliance.heartbeat import RunningState
from astara.appliance.hostname import HostnameSubsystem
from astara.appliance.status import LiveState
from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.wire.api import Health
from astara.wire.document import ApplianceConfig, config_digest

pytestmark = pytest.mark.unit

MAC_MGMT = "fa:16:3e:00:00:01"
MAC_EXT = "fa:16:3e:00:00:02"
MAC_INT = "fa:16:3e:00:00:03"


def signature(seed: str) -> str:
    """A well-formed instance signature (64 hex characters) standing in for a secret."""
    return hashlib.sha256(seed.encode()).hexdigest()


def document(
    generation: int = 1, proxy_key: str = signature("s3cret"), **changes: Any
) -> ApplianceConfig:
    """``proxy_key``: the one secret in the document, an instance's metadata signature."""
    identity = {"instance_id": "i1", "project_id": "p1", "signature": proxy_key}
    base: dict[str, Any] = {
        "generation": generation,
        "router_id": "r1",
        "hostname": "r1",
        "interfaces": [{"mac": MAC_MGMT}, {"mac": MAC_EXT}, {"mac": MAC_INT}],
        "networks": [
            {
                "id": "mgmt",
                "kind": "management",
                "interface_mac": MAC_MGMT,
                "addresses": ["fdca::5/64"],
            },
            {
                "id": "ext",
                "kind": "external",
                "interface_mac": MAC_EXT,
                "addresses": ["172.24.4.2/24"],
                "subnets": [{"id": "ext4", "cidr": "172.24.4.0/24"}],
            },
            {
                "id": "int",
                "kind": "internal",
                "interface_mac": MAC_INT,
                "addresses": ["10.0.0.1/24"],
                "subnets": [{"id": "int4", "cidr": "10.0.0.0/24"}],
                "allocations": [
                    {
                        "port_id": "p1",
                        "mac": "fa:16:3e:00:01:05",
                        "ips": ["10.0.0.5"],
                        "hostname": "vm1",
                        "instance": identity,
                    }
                ],
            },
        ],
        "metadata": {"upstream_url": "http://[fdca::1]:8775/"},
    }
    base.update(changes)
    return ApplianceConfig.model_validate(base)


Call = tuple[str, int | None, int | None, dict[str, str]]


class RecordingSubsystem:
    """Test double: records (name, desired gen, previous gen, links) and fails on demand."""

    def __init__(self, name: str, journal: list[Call], fail_on: set[int] | None = None) -> None:
        self.name = name
        self.journal = journal
        self.fail_on = fail_on if fail_on is not None else set()

    def apply(
        self,
        desired: ApplianceConfig | None,
        previous: ApplianceConfig | None,
        links: LinkMap,
    ) -> None:
        generation = desired.generation if desired else None
        self.journal.append(
            (self.name, generation, previous.generation if previous else None, dict(links))
        )
        if generation in self.fail_on:
            raise ApplyStepError(self.name, f"refused generation {generation}")


def fake_links(macs: Iterable[str]) -> LinkMap:
    return {mac: f"eth{index}" for index, mac in enumerate(sorted(macs))}


def make_engine(
    tmp_path: Path, fail: dict[str, set[int]] | None = None, order: Iterable[str] = APPLY_ORDER
) -> tuple[Engine, list[Call]]:
    journal: list[Call] = []
    subsystems = [RecordingSubsystem(name, journal, (fail or {}).get(name)) for name in order]
    return Engine(subsystems, tmp_path, fake_links), journal


def steps(journal: list[Call]) -> list[tuple[str, int | None, int | None]]:
    return [(name, desired, previous) for name, desired, previous, _ in journal]


def test_subsystems_run_in_apply_order_whatever_order_they_are_given(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path, order=reversed(APPLY_ORDER))
    health = engine.apply(document(1))
    assert [name for name, *_ in journal] == list(APPLY_ORDER)
    assert health.generation == 1
    assert health.last_result == "applied"
    assert health.last_apply_duration_s is not None


def test_links_are_resolved_by_mac_and_passed_to_every_step(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path)
    engine.apply(document(1))
    expected = {MAC_MGMT: "eth0", MAC_EXT: "eth1", MAC_INT: "eth2"}
    assert all(links == expected for *_, links in journal)


def test_each_apply_passes_the_previous_document(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path)
    engine.apply(document(1))
    engine.apply(document(2))
    assert steps(journal)[len(APPLY_ORDER)] == ("addresses", 2, 1)
    assert engine.current is not None and engine.current.generation == 2


def test_older_generation_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path)
    engine.apply(document(5))
    journal.clear()
    with pytest.raises(StaleGeneration) as info:
        engine.apply(document(4))
    assert (info.value.applied, info.value.requested) == (5, 4)
    assert journal == []


def test_same_generation_same_content_is_a_no_op(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path)
    engine.apply(document(3))
    journal.clear()
    health = engine.apply(document(3))
    assert journal == []
    assert health.last_result == "unchanged"
    assert health.generation == 3


def test_same_generation_different_content_is_refused(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path)
    engine.apply(document(3))
    journal.clear()
    with pytest.raises(StaleGeneration):
        engine.apply(document(3, proxy_key=signature("other")))
    assert journal == []


def test_failure_rolls_back_the_taken_steps_in_reverse(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path, fail={"dhcp": {2}})
    engine.apply(document(1))
    journal.clear()
    with pytest.raises(ApplyFailed) as info:
        engine.apply(document(2))
    assert info.value.step == "dhcp"
    assert "refused generation 2" in info.value.detail
    assert steps(journal) == [
        ("addresses", 2, 1),
        ("firewall", 2, 1),
        ("conntrack", 2, 1),
        ("dhcp", 2, 1),
        ("dhcp", 1, 2),
        ("conntrack", 1, 2),
        ("firewall", 1, 2),
        ("addresses", 1, 2),
    ]
    assert engine.current is not None and engine.current.generation == 1
    health = engine.health()
    assert health.generation == 1
    assert health.last_result == "failed"
    assert health.last_failed_step == "dhcp"
    assert health.last_error is not None and "dhcp" in health.last_error


def test_failure_of_the_first_apply_rolls_back_to_nothing(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path, fail={"firewall": {1}})
    with pytest.raises(ApplyFailed):
        engine.apply(document(1))
    assert steps(journal)[2:] == [("firewall", None, 1), ("addresses", None, 1)]
    assert engine.current is None
    assert engine.health().generation is None
    assert not (tmp_path / "config.json").exists()


def test_any_exception_is_an_apply_failure_and_rollback_errors_are_reported(
    tmp_path: Path,
) -> None:
    journal: list[Call] = []

    class Exploding(RecordingSubsystem):
        def apply(self, desired: Any, previous: Any, links: LinkMap) -> None:
            super().apply(desired, previous, links)
            raise KeyError("boom")

    subsystems = [RecordingSubsystem("addresses", journal), Exploding("firewall", journal)]
    engine = Engine(subsystems, tmp_path, fake_links)
    with pytest.raises(ApplyFailed) as info:
        engine.apply(document(1))
    assert info.value.step == "firewall"
    assert "boom" in info.value.detail
    assert "rollback also failed" in info.value.detail
    assert steps(journal)[-1] == ("addresses", None, 1)


def test_unresolvable_links_fail_before_any_step(tmp_path: Path) -> None:
    journal: list[Call] = []

    def no_links(macs: Iterable[str]) -> LinkMap:
        raise LookupError("no interface with MAC fa:16:3e:00:00:02")

    engine = Engine([RecordingSubsystem("addresses", journal)], tmp_path, no_links)
    with pytest.raises(ApplyFailed) as info:
        engine.apply(document(1))
    assert info.value.step == "links"
    assert journal == []


def test_a_nic_that_appears_during_the_link_wait_is_used(tmp_path: Path) -> None:
    """A NIC hot-plugged into a VM shows up after the hypervisor attached it: wait for it."""
    journal: list[Call] = []
    looks: list[float] = []

    def late_links(macs: Iterable[str]) -> LinkMap:
        looks.append(time.monotonic())
        if len(looks) < 3:
            raise LookupError("no interface with MAC fa:16:3e:00:00:03")
        return {mac: f"eth{i}" for i, mac in enumerate(sorted(macs))}

    engine = Engine(
        [RecordingSubsystem("addresses", journal)],
        tmp_path,
        late_links,
        link_wait=10.0,
        sleep=lambda _: None,
    )
    assert engine.apply(document(1)).generation == 1
    # The first look also asks for the previous document's NICs; then two waits for eth2.
    assert len(looks) == 3
    assert steps(journal) == [("addresses", 1, None)]


def test_a_nic_still_missing_after_the_link_wait_fails_the_apply(tmp_path: Path) -> None:
    naps: list[float] = []

    def no_links(macs: Iterable[str]) -> LinkMap:
        raise LookupError("no interface with MAC fa:16:3e:00:00:02")

    engine = Engine([], tmp_path, no_links, link_wait=0.5, sleep=naps.append)
    started = time.monotonic()
    with pytest.raises(ApplyFailed) as info:
        engine.apply(document(1))
    assert info.value.step == "links"
    assert naps, "it waited before giving up"
    assert time.monotonic() - started < 0.5 + 5, "bounded by the link wait"


def recorded(engine: Engine, config: ApplianceConfig) -> Health:
    """Apply, then wait until the document is saved, digested and the live state fingerprinted."""
    health = engine.apply(config)
    assert engine.wait_recorded(5)
    return health


def test_good_document_is_persisted_with_secrets_and_private(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    key = signature("top")
    recorded(engine, document(7, proxy_key=key))
    saved = tmp_path / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    saved_network = json.loads(saved.read_text())["networks"][2]
    assert saved_network["allocations"][0]["instance"]["signature"] == key
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_failed_document_is_not_persisted(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, fail={"ra": {2}})
    recorded(engine, document(1))
    with pytest.raises(ApplyFailed):
        engine.apply(document(2))
    assert json.loads((tmp_path / "config.json").read_text())["generation"] == 1


def test_restore_reapplies_the_saved_document_at_startup(tmp_path: Path) -> None:
    first, _ = make_engine(tmp_path)
    recorded(first, document(4, proxy_key=signature("kept")))
    rebooted, journal = make_engine(tmp_path)
    restored = rebooted.restore()
    assert restored == document(4, proxy_key=signature("kept"))
    assert steps(journal) == [(name, 4, None) for name in APPLY_ORDER]
    assert rebooted.health().generation == 4
    with pytest.raises(StaleGeneration):
        rebooted.apply(document(3))


def test_restore_without_saved_document_does_nothing(tmp_path: Path) -> None:
    engine, journal = make_engine(tmp_path)
    assert engine.restore() is None
    assert journal == []


def test_applies_are_serialised(tmp_path: Path) -> None:
    active = 0
    overlaps = 0
    guard = threading.Lock()

    class Slow:
        name = "addresses"

        def apply(self, desired: Any, previous: Any, links: LinkMap) -> None:
            nonlocal active, overlaps
            with guard:
                active += 1
                overlaps += active > 1
            time.sleep(0.02)
            with guard:
                active -= 1

    engine = Engine([Slow()], tmp_path, fake_links)

    def push(generation: int) -> None:
        # Threads race, so a lower generation may arrive after a higher one: that is a 409.
        with contextlib.suppress(StaleGeneration):
            engine.apply(document(generation))

    threads = [threading.Thread(target=push, args=(gen,)) for gen in range(10, 14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == 0


class FakeProbe:
    """Test double for the live-state reader: a mutable 'kernel' state per link map.

    ``hold``: the next read takes its state, says so on the first event and returns it only
    once the second is set (an apply may run meanwhile)."""

    def __init__(self) -> None:
        self.state = "pristine"
        self.seen: list[dict[str, str]] = []
        self.since: list[LiveState | None] = []
        self.broken = False
        self.hold: tuple[threading.Event, threading.Event] | None = None

    def read(self, links: LinkMap, since: LiveState | None = None) -> LiveState:
        self.seen.append(dict(links))
        self.since.append(since)
        if self.broken:
            raise OSError("nft: cannot list")
        state = LiveState(
            addresses=frozenset(f"{name} {self.state}" for name in links.values()),
            routes=frozenset(),
            tables=(),
            daemons=frozenset(),
        )
        if self.hold is not None:
            (taken, release), self.hold = self.hold, None
            taken.set()
            release.wait(5)
        return state


def probed_engine(
    tmp_path: Path, fail: dict[str, set[int]] | None = None
) -> tuple[Engine, list[Call], FakeProbe]:
    journal: list[Call] = []
    subsystems = [RecordingSubsystem(name, journal, (fail or {}).get(name)) for name in APPLY_ORDER]
    probe = FakeProbe()
    return Engine(subsystems, tmp_path, fake_links, probe), journal, probe


def test_ports_map_the_applied_interfaces_to_their_neutron_ports(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    assert engine.ports() == {}
    interfaces = [{"mac": MAC_MGMT}, {"mac": MAC_EXT, "port_id": "port-ext"}, {"mac": MAC_INT}]
    engine.apply(document(1, interfaces=interfaces))
    assert engine.ports() == {MAC_EXT: "port-ext"}


def test_the_hostname_is_set_when_it_changes_and_kept_when_the_document_goes() -> None:
    named: list[str] = []
    hostname = HostnameSubsystem(named.append)
    hostname.apply(document(1), None, {})
    hostname.apply(document(2), document(1), {})
    renamed = document(3, hostname="edge-1")
    hostname.apply(renamed, document(2), {})
    hostname.apply(None, renamed, {})
    assert named == ["r1", "edge-1"]

    def refuse(name: str) -> None:
        raise PermissionError("not allowed")

    HostnameSubsystem(refuse).apply(document(1), None, {})  # logged; the apply goes on


def test_drift_is_unknown_before_the_first_apply_and_without_a_probe(tmp_path: Path) -> None:
    engine, _, _ = probed_engine(tmp_path / "a")
    assert engine.drift() is None
    bare, _ = make_engine(tmp_path / "b")
    bare.apply(document(1))
    assert bare.drift() is None


def test_drift_compares_the_live_state_with_what_the_apply_produced(tmp_path: Path) -> None:
    engine, _, probe = probed_engine(tmp_path)
    recorded(engine, document(1))
    assert engine.drift() is False
    probe.state = "table flushed behind our back"
    assert engine.drift() is True


def test_unreadable_live_state_counts_as_drift(tmp_path: Path) -> None:
    engine, _, probe = probed_engine(tmp_path)
    recorded(engine, document(1))
    probe.broken = True
    assert engine.drift() is True


def test_drift_looks_only_at_the_interfaces_of_the_applied_document(tmp_path: Path) -> None:
    engine, _, probe = probed_engine(tmp_path)
    recorded(engine, document(1))
    # Generation 2 drops the external interface: it may be unplugged later, which is no drift.
    mgmt_only = document(1).model_dump(mode="json")
    recorded(
        engine, document(2, interfaces=[{"mac": MAC_MGMT}], networks=mgmt_only["networks"][:1])
    )
    assert probe.seen[-1] == {MAC_MGMT: "eth0"}
    assert engine.drift() is False


def test_a_record_reads_since_the_last_one_and_in_full_after_a_failed_read(
    tmp_path: Path,
) -> None:
    engine, _, probe = probed_engine(tmp_path)
    recorded(engine, document(1))
    assert probe.since[-1] is None
    first = probe.read(probe.seen[-1])
    recorded(engine, document(2))
    assert probe.since[-1] == first
    probe.broken = True
    recorded(engine, document(3))
    probe.broken = False
    recorded(engine, document(4))
    # What the failed read would have been based on is unknown: everything is read again.
    assert probe.since[-1] is None
    assert engine.drift() is False


def test_a_record_read_while_another_apply_ran_is_discarded(tmp_path: Path) -> None:
    engine, _, probe = probed_engine(tmp_path, fail={"ra": {3}})
    recorded(engine, document(1))
    taken, release = threading.Event(), threading.Event()
    probe.hold = (taken, release)
    engine.apply(document(2))
    assert taken.wait(5)  # generation 2's record has read the state of the moment...
    probe.state = "written by generation 3, then rolled back"
    with pytest.raises(ApplyFailed):
        engine.apply(document(3))  # ...which this apply changes, and its rollback reads
    release.set()
    assert engine.wait_recorded(5)
    assert engine.current == document(2)
    assert engine.drift() is False


def test_an_apply_does_not_wait_for_a_drift_check_which_then_answers_unknown(
    tmp_path: Path,
) -> None:
    engine, _, probe = probed_engine(tmp_path)
    recorded(engine, document(1))
    taken, release = threading.Event(), threading.Event()
    probe.hold = (taken, release)
    verdict: list[bool | None] = []
    checking = threading.Thread(target=lambda: verdict.append(engine.drift()))
    checking.start()
    assert taken.wait(5)
    applying = threading.Thread(target=engine.apply, args=(document(2),))
    applying.start()
    applying.join(5)
    finished_while_held = not applying.is_alive()
    release.set()
    checking.join(5)
    applying.join(5)
    assert finished_while_held
    assert verdict == [None]  # read across an apply: no verdict either way


def test_reapply_runs_every_step_without_a_previous_document_and_clears_drift(
    tmp_path: Path,
) -> None:
    engine, journal, probe = probed_engine(tmp_path)
    recorded(engine, document(1))
    probe.state = "address deleted"
    assert engine.drift() is True
    journal.clear()
    health = engine.reapply()
    assert engine.wait_recorded(5)
    assert steps(journal) == [(name, 1, None) for name in APPLY_ORDER]
    assert (health.generation, health.last_result) == (1, "applied")
    assert engine.drift() is False


def test_reapply_before_any_document_is_refused(tmp_path: Path) -> None:
    engine, journal, _ = probed_engine(tmp_path)
    with pytest.raises(NothingApplied):
        engine.reapply()
    assert journal == []


def test_failed_reapply_is_not_rolled_back_and_reports_drift(tmp_path: Path) -> None:
    fail: dict[str, set[int]] = {"dhcp": set()}
    engine, journal, _ = probed_engine(tmp_path, fail)
    recorded(engine, document(1))
    fail["dhcp"].add(1)
    journal.clear()
    with pytest.raises(ApplyFailed) as info:
        engine.reapply()
    assert info.value.step == "dhcp"
    # Rolling back to "no previous document" would tear the router down: nothing runs after.
    assert steps(journal) == [
        ("addresses", 1, None),
        ("firewall", 1, None),
        ("conntrack", 1, None),
        ("dhcp", 1, None),
    ]
    assert engine.current == document(1)
    assert engine.drift() is True


def test_failed_apply_rolled_back_records_the_previous_live_state(tmp_path: Path) -> None:
    engine, _, _ = probed_engine(tmp_path, fail={"ra": {2}})
    recorded(engine, document(1))
    with pytest.raises(ApplyFailed):
        recorded(engine, document(2))
    assert engine.drift() is False


def test_config_digest_follows_the_document_secrets_included(tmp_path: Path) -> None:
    assert config_digest(document(1)) == config_digest(document(1))
    assert config_digest(document(1)) != config_digest(document(2))
    first, second = signature("a"), signature("b")
    assert config_digest(document(1, proxy_key=first)) != config_digest(
        document(1, proxy_key=second)
    )


def test_running_state_reports_generation_and_document_digest(tmp_path: Path) -> None:
    engine, _, _ = probed_engine(tmp_path)
    assert engine.running_state() == RunningState(generation=None, digest="")
    recorded(engine, document(4))
    assert engine.running_state() == RunningState(generation=4, digest=config_digest(document(4)))
    assert engine.health().config_digest == config_digest(document(4))
