"""The appliance-side holes of the security review (issue #12), as pure decisions.

Each test names the item it reproduces; the namespace tests with real packets, daemons and
processes are in tests/functional/test_security_appliance.py.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from astara.appliance import service
from astara.appliance.api import create_app
from astara.appliance.engine import APPLY_ORDER, Engine
from astara.appliance.files import write_private
from astara.appliance.heartbeat import HeartbeatSender, RunningState
from astara.appliance.management import DomainRoute, DomainRule, plan_domain
from astara.drivers.router import ManagementPort, render
from astara.wire.document import MAX_GENERATION, ApplianceConfig, problems
from astara.wire.heartbeat import decode
from tests.unit.test_api import FixedStatus
from tests.unit.test_engine import RecordingSubsystem, fake_links
from tests.unit.test_models import DOC
from tests.unit.test_router_driver import recorded, snapshot_of

pytestmark = [pytest.mark.unit, pytest.mark.security]

MGMT_MAC = "fa:16:3e:00:00:09"
MGMT_NET = "192.168.77.0/24"
ORCHESTRATOR = "192.168.77.1"
TENANT_VM = "10.0.0.5"


def managed(**changes: Any) -> dict[str, Any]:
    """The unit tests' valid document, with a management network on 192.168.77.0/24."""
    doc = copy.deepcopy(DOC)
    doc["interfaces"].append({"mac": MGMT_MAC})
    doc["networks"].insert(
        0,
        {
            "id": "mgmt",
            "kind": "management",
            "interface_mac": MGMT_MAC,
            "addresses": ["192.168.77.2/24"],
        },
    )
    doc.update(changes)
    return doc


def refusals(doc: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    """loc -> msg of every reason ``doc`` is refused (pydantic's and problems()')."""
    try:
        config = ApplianceConfig.model_validate(doc)
    except ValidationError as exc:
        return {tuple(e["loc"]): e["msg"] for e in exc.errors()}
    return {p.loc: p.msg for p in problems(config)}


# Item 10: regexes anchored with "$" let a trailing newline through.


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("hostname",), "router-1\n"),
        (("interfaces", 0, "mac"), "fa:16:3e:00:00:01\n"),
        (("networks", 1, "allocations", 0, "hostname"), "vm1\n"),
        (("networks", 1, "allocations", 0, "mac"), "fa:16:3e:00:01:05\n"),
        (("networks", 1, "allocations", 0, "port_id"), "p1\n"),
        (("router_id",), "r-1\n"),
    ],
)
def test_a_trailing_newline_is_refused(path: tuple[str | int, ...], value: str) -> None:
    doc = copy.deepcopy(DOC)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    found = refusals(doc)
    assert path in found, found


def test_netns_provider_prefix_is_matched_whole() -> None:
    from astara.providers.netns import Names

    with pytest.raises(ValueError, match="prefix"):
        Names("ast\n")


# Item 9: integers bounded by what their consumers accept.


@pytest.mark.parametrize("generation", [MAX_GENERATION + 1, 2**63 - 1, 2**64, 0])
def test_generation_beyond_what_the_store_and_heartbeats_take_is_refused(generation: int) -> None:
    found = refusals({**DOC, "generation": generation})
    assert list(found) == [("generation",)]


def test_the_largest_generation_is_accepted_and_fits_a_heartbeat() -> None:
    assert refusals({**DOC, "generation": MAX_GENERATION}) == {}
    assert MAX_GENERATION <= 2**64 - 1


def test_the_heartbeat_thread_survives_a_state_the_wire_cannot_carry() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    states = [RunningState(generation=2**64, digest="d"), RunningState(generation=7, digest="d")]
    calls: list[int] = []

    def state() -> RunningState:
        calls.append(1)
        return states[min(len(calls) - 1, 1)]

    key = b"k" * 32
    sender = HeartbeatSender("i-1", key, receiver.getsockname(), state, interval=0.05)
    sender.start()
    try:
        datagram, _ = receiver.recvfrom(4096)
        thread = next(t for t in threading.enumerate() if t.name == "heartbeat-i-1")
        assert thread.is_alive()
    finally:
        sender.stop()
        receiver.close()
    beat = decode(datagram, {"i-1": key}.get, time.time(), 60, lambda _: None)
    assert beat.generation == 7


# Item 4: tenant data must not reach into the management plane.


def test_tenant_subnet_address_and_routes_overlapping_management_are_refused() -> None:
    doc = managed(
        routes=[
            {"destination": f"{ORCHESTRATOR}/32", "nexthop": TENANT_VM},
            {"destination": "10.9.0.0/16", "nexthop": "192.168.77.254"},
        ]
    )
    internal = doc["networks"][2]
    internal["addresses"].append("192.168.77.9/25")
    internal["subnets"].append({"id": "s-m", "cidr": "192.168.77.0/25"})
    internal["subnets"][0]["host_routes"] = [
        {"destination": "192.168.77.128/25", "nexthop": "10.0.0.254"}
    ]
    found = refusals(doc)
    assert found == {
        ("networks", 2, "addresses", 1): f"overlaps the management network {MGMT_NET}",
        ("networks", 2, "subnets", 1, "cidr"): f"overlaps the management network {MGMT_NET}",
        ("networks", 2, "subnets", 0, "host_routes", 0, "destination"): (
            f"inside the management network {MGMT_NET}"
        ),
        ("routes", 0, "destination"): f"inside the management network {MGMT_NET}",
        ("routes", 1, "nexthop"): f"on the management network {MGMT_NET}",
    }


def test_wider_tenant_routes_stay_allowed() -> None:
    doc = managed(
        routes=[
            {"destination": "0.0.0.0/0", "nexthop": TENANT_VM},
            {"destination": "192.168.0.0/16", "nexthop": TENANT_VM},
        ]
    )
    assert refusals(doc) == {}


def test_the_renderer_leaves_out_what_overlaps_management_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = recorded()
    backend = next(s for s in raw["subnets"] if s["cidr"] == "10.0.1.0/24")
    private = next(s for s in raw["subnets"] if s["cidr"] == "10.0.0.0/24")
    private["host_routes"].append({"destination": "10.0.1.128/25", "nexthop": "10.0.0.254"})
    raw["router"]["routes"] += [
        {"destination": "10.0.1.250/32", "nexthop": "10.0.0.200"},
        {"destination": "10.20.0.0/16", "nexthop": "10.0.1.7"},
    ]
    management = ManagementPort(
        network_id="mgmt",
        mac="fa:16:3e:00:00:01",
        addresses=(ipaddress.ip_interface("10.0.1.250/24"),),
    )
    with caplog.at_level(logging.WARNING, logger="astara.drivers.router"):
        config = render(snapshot_of(raw), 7, management)
    assert problems(config) == []
    subnets = [str(s.cidr) for n in config.networks for s in n.subnets]
    assert "10.0.1.0/24" not in subnets and "10.0.0.0/24" in subnets
    assert [str(r.destination) for r in config.routes] == ["192.168.100.0/24"]
    routes = next(s for n in config.networks for s in n.subnets if str(s.cidr) == "10.0.0.0/24")
    assert [str(r.destination) for r in routes.host_routes] == ["172.16.0.0/16"]
    logged = caplog.text
    assert f"subnet {backend['id']}" in logged and "router " in logged
    assert logged.count("skipped") == 5


def test_the_management_domain_plan() -> None:
    plan = plan_domain(
        "eth0",
        [ipaddress.ip_interface("fdca::5/64"), ipaddress.ip_interface("192.168.77.2/24")],
        [ipaddress.ip_address("fdca::1"), ipaddress.ip_address("10.50.0.9")],
        [DomainRoute(socket.AF_INET, "10.50.0.0/16", "192.168.77.254", "eth0")],
    )
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert plan.rules == {
        DomainRule(v6, "to", "fdca::/64"),
        DomainRule(v6, "from", "fdca::5/128"),
        DomainRule(v4, "to", "192.168.77.0/24"),
        DomainRule(v4, "from", "192.168.77.2/32"),
        # The heartbeat target outside the management prefix; fdca::1 is inside it.
        DomainRule(v4, "to", "10.50.0.9/32"),
    }
    assert plan.routes == {
        DomainRoute(v4, "0.0.0.0/0", None, None),
        DomainRoute(v6, "::/0", None, None),
        DomainRoute(v6, "fdca::/64", None, "eth0", "fdca::5"),
        DomainRoute(v4, "192.168.77.0/24", None, "eth0", "192.168.77.2"),
        DomainRoute(v4, "10.50.0.0/16", "192.168.77.254", "eth0"),
    }


# Item 11: request bodies are bounded; a stored document that no longer validates.


@pytest.fixture
def limited(tmp_path: Path) -> tuple[TestClient, Engine]:
    journal: list[Any] = []
    engine = Engine(
        [RecordingSubsystem(name, journal) for name in APPLY_ORDER], tmp_path, fake_links
    )
    return TestClient(create_app(engine, FixedStatus(), max_body_bytes=4096)), engine


def test_a_body_over_the_limit_is_413_declared_or_chunked(
    limited: tuple[TestClient, Engine],
) -> None:
    client, engine = limited
    headers = {"content-type": "application/json"}
    declared = client.put("/v1/config", content=b" " * 4097, headers=headers)
    assert declared.status_code == 413
    assert declared.json() == {"detail": "request body larger than 4096 bytes"}
    assert declared.headers["connection"] == "close"

    def chunks() -> Any:
        for _ in range(100):
            yield b" " * 1000

    assert client.put("/v1/config", content=chunks(), headers=headers).status_code == 413
    assert engine.current is None
    assert client.get("/v1/health").json()["last_result"] == "none"


def test_a_body_within_the_limit_is_served(limited: tuple[TestClient, Engine]) -> None:
    client, _ = limited
    answer = client.put("/v1/config", content=b"{}", headers={"content-type": "application/json"})
    assert answer.status_code == 422


@pytest.mark.parametrize(
    "stored",
    [
        json.dumps({**DOC, "generation": 2**64}),
        json.dumps({**DOC, "hostname": "router\n"}),
        json.dumps(managed(routes=[{"destination": f"{ORCHESTRATOR}/32", "nexthop": TENANT_VM}])),
        "{not json",
    ],
    ids=["generation-2**64", "hostname-newline", "route-into-management", "not-json"],
)
def test_a_stored_document_that_no_longer_validates_leaves_the_appliance_unconfigured(
    tmp_path: Path, stored: str
) -> None:
    saved = tmp_path / "config.json"
    saved.write_text(stored)
    os.chmod(saved, 0o644)
    journal: list[Any] = []
    engine = Engine(
        [RecordingSubsystem(name, journal) for name in APPLY_ORDER], tmp_path, fake_links
    )
    assert engine.restore() is None
    assert journal == []
    assert not saved.exists()
    (kept,) = tmp_path.glob("config.json.invalid-*")
    assert kept.read_text() == stored
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    health = engine.health()
    assert health.generation is None
    assert health.last_error is not None and "saved configuration refused" in health.last_error
    assert engine.running_state().generation is None
    # A new document is taken.
    engine.apply(ApplianceConfig.model_validate(DOC))
    assert engine.health().generation == DOC["generation"]


# Item 14: tenant data in private files.


def test_daemon_files_are_written_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "hosts"
        assert write_private(target, "fa:16:3e:00:00:05,10.0.0.5,vm\n")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert not write_private(target, "fa:16:3e:00:00:05,10.0.0.5,vm\n")
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--heartbeat-interval", "1e308"], "--heartbeat-interval must be above 0 and at most 60"),
        (["--drift-check-interval", "1e9"], "--drift-check-interval must be above 0 and at most"),
        (["--port", "70000"], "--port must be 1 to 65535"),
        (["--api-threads", "0"], "--api-threads must be 1 to 256"),
        (["--max-body-bytes", "0"], "--max-body-bytes must be positive"),
    ],
)
def test_appliance_flags_are_bounded_by_what_uses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], complaint: str
) -> None:
    key_file = tmp_path / "hb.key"
    key_file.write_text("00ff10\n")
    parser = service.build_parser()
    beats = ["--heartbeat", "[fdca::1]:5555", "--instance-id", "i1"]
    args = parser.parse_args([*beats, "--heartbeat-key-file", str(key_file), *flags])
    with pytest.raises(SystemExit):
        service.check_limits(parser, args)
        service.heartbeat_settings(parser, args)
    assert complaint in capsys.readouterr().err
