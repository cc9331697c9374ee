"""Neutron 29 notifications (recorded on the real test bed) become router and project events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from astara.orchestrator.events import Event, EventAction, ResourceType, from_notification

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT = "5d1e6f0a2b3c4d5e8f9a0b1c2d3e4f50"
R1 = "40181cd3-7eeb-434c-8030-5997695388ad"
R2 = "d5b9544e-7ce6-4fb6-80f1-e76a7e0e255a"
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

NOTIFICATIONS: list[dict[str, Any]] = json.loads(
    (FIXTURES / "neutron_notifications.json").read_text()
)


def recorded(event_type: str, match: str = "") -> list[dict[str, Any]]:
    """The recorded payloads of one event type (whose JSON contains ``match``), in order."""
    found = [
        n["payload"]
        for n in NOTIFICATIONS
        if n["event_type"] == event_type and match in json.dumps(n["payload"])
    ]
    assert found, f"no recorded {event_type} with {match!r}"
    return found


def summary(events: list[Event]) -> list[tuple[str, str, str | None, str]]:
    return [(e.resource_type, e.resource_id, e.project_id, e.action) for e in events]


def mapped(event_type: str, payload: dict[str, Any]) -> list[tuple[str, str, str | None, str]]:
    return summary(from_notification(event_type, payload, AT))


@pytest.mark.parametrize(
    ("event_type", "action"),
    [
        ("router.create.end", EventAction.CREATE),
        ("router.update.end", EventAction.UPDATE),
        ("router.delete.end", EventAction.DELETE),
    ],
)
def test_router_lifecycle(event_type: str, action: EventAction) -> None:
    payload = recorded(event_type, R1)[0]
    assert mapped(event_type, payload) == [("router", R1, PROJECT, action)]


def test_router_delete_with_only_the_router_id() -> None:
    assert mapped("router.delete.end", {"router_id": R1}) == [("router", R1, None, "delete")]


@pytest.mark.parametrize("event_type", ["router.interface.create", "router.interface.delete"])
def test_router_interfaces_update_their_router(event_type: str) -> None:
    for payload in recorded(event_type, R1):
        assert mapped(event_type, payload) == [("router", R1, PROJECT, "update")]


def test_event_carries_cause_and_time() -> None:
    payload = recorded("router.interface.create", R1)[0]
    (event,) = from_notification("router.interface.create", payload, AT)
    assert event.cause == "router.interface.create"
    assert event.received_at == AT
    assert event.resource_type is ResourceType.ROUTER


def test_floating_ip_created_on_a_port_updates_its_router() -> None:
    payload = recorded("floatingip.create.end")[0]
    assert mapped("floatingip.create.end", payload) == [("router", R1, PROJECT, "update")]


def test_floating_ip_moved_updates_the_new_router_and_resyncs_the_project() -> None:
    moved, detached = recorded("floatingip.update.end")
    # Neutron 29 says where the floating IP went (r2), not where it was (r1).
    assert mapped("floatingip.update.end", moved) == [
        ("router", R2, PROJECT, "update"),
        ("project", PROJECT, PROJECT, "update"),
    ]
    assert mapped("floatingip.update.end", detached) == [("project", PROJECT, PROJECT, "update")]


def test_floating_ip_deleted_while_associated_updates_its_router() -> None:
    payload = recorded("floatingip.delete.end")[0]
    assert mapped("floatingip.delete.end", payload) == []  # it had been detached first
    attached = {**payload, "floatingip": {**payload["floatingip"], "router_id": R1}}
    assert mapped("floatingip.delete.end", attached) == [("router", R1, PROJECT, "update")]


def test_router_owned_ports_update_their_router() -> None:
    port = recorded("port.create.end", "compute:nova")[0]["port"]
    for owner in ("network:router_interface", "network:router_gateway"):
        payload = {"port": {**port, "device_owner": owner, "device_id": R1}}
        assert mapped("port.update.end", payload) == [("router", R1, PROJECT, "update")]


@pytest.mark.parametrize("event_type", ["port.create.end", "port.update.end", "port.delete.end"])
def test_workload_ports_resync_their_project(event_type: str) -> None:
    payload = recorded(event_type, "compute:nova")[0]
    assert mapped(event_type, payload) == [("project", PROJECT, PROJECT, "update")]


def test_dhcp_ports_are_ignored() -> None:
    payload = recorded("port.create.end", "network:dhcp")[0]
    assert mapped("port.create.end", payload) == []


def test_subnet_update_resyncs_its_project() -> None:
    payload = recorded("subnet.update.end")[0]
    assert mapped("subnet.update.end", payload) == [("project", PROJECT, PROJECT, "update")]


def test_network_update_resyncs_its_project() -> None:
    payload = {"network": {"id": "n1", "project_id": PROJECT, "mtu": 1400}}
    assert mapped("network.update.end", payload) == [("project", PROJECT, PROJECT, "update")]


def test_everything_else_maps_to_nothing() -> None:
    mapped_types = {
        "router.create.end",
        "router.update.end",
        "router.delete.end",
        "router.interface.create",
        "router.interface.delete",
        "floatingip.create.end",
        "floatingip.update.end",
        "floatingip.delete.end",
        "port.create.end",
        "port.update.end",
        "port.delete.end",
        "subnet.update.end",
        "network.update.end",
    }
    others = [n for n in NOTIFICATIONS if n["event_type"] not in mapped_types]
    assert {n["event_type"] for n in others} >= {"network.create.end", "router.create.start"}
    for n in others:
        assert from_notification(n["event_type"], n["payload"], AT) == []
    assert from_notification("routerstatus.update", {"router": {"id": R1}}, AT) == []


def test_malformed_payloads_map_to_nothing() -> None:
    assert from_notification("router.create.end", {}, AT) == []
    assert from_notification("router.interface.create", {"router_interface": "x"}, AT) == []
    assert (
        from_notification("port.update.end", {"port": {"device_owner": "compute:nova"}}, AT) == []
    )


def test_every_recorded_notification_maps_without_error() -> None:
    events = [e for n in NOTIFICATIONS for e in from_notification(n["event_type"], n["payload"])]
    assert {e.resource_id for e in events if e.resource_type == "router"} == {R1, R2}
    assert all(e.received_at.tzinfo is not None for e in events)
