"""The orchestrator's side of Astara's Neutron plugin: forwarded events and status writes."""

from __future__ import annotations

from typing import Any

import pytest

from astara.neutron.protocol import RouterEvent
from astara.orchestrator.events import EventAction, ResourceType, from_plugin_event
from astara.orchestrator.listener import _NotificationEndpoint
from astara.orchestrator.neutron_status import status_body
from astara.orchestrator.state import State

pytestmark = pytest.mark.unit


def forwarded(resource: str, action: str) -> tuple[str, dict[str, Any]]:
    event = RouterEvent(resource, action, "r1", "p1", "x1", "test")
    return event.event_type, event.to_payload()


def test_forwarded_events_become_router_events() -> None:
    (created,) = from_plugin_event(*forwarded("router", "create"))
    assert (created.resource_type, created.resource_id, created.action) == (
        ResourceType.ROUTER,
        "r1",
        EventAction.CREATE,
    )
    (deleted,) = from_plugin_event(*forwarded("router", "delete"))
    assert deleted.action is EventAction.DELETE
    (interface,) = from_plugin_event(*forwarded("router_interface", "delete"))
    assert interface.action is EventAction.UPDATE
    assert from_plugin_event("astara.router.create", {"version": 99}) == []


def test_with_the_plugin_the_covered_notifications_are_not_handled_twice() -> None:
    received: list[list[Any]] = []
    endpoint = _NotificationEndpoint(received.append, plugin_events=True)
    payload = {"router_interface": {"id": "r1", "project_id": "p1"}}
    endpoint.info({}, "network.host", "router.interface.create", payload, {})
    assert received == []
    endpoint.info({}, "astara-neutron", *forwarded("router_interface", "create"), {})
    endpoint.info({}, "network.host", "port.create.end", {"port": {"project_id": "p1"}}, {})
    assert [events[0].cause for events in received] == [
        "astara.router_interface.create",
        "port.create.end",
    ]
    without = _NotificationEndpoint(received.append, plugin_events=False)
    without.info({}, "network.host", "router.interface.create", payload, {})
    assert received[-1][0].cause == "router.interface.create"


def test_status_follows_the_state() -> None:
    assert status_body(State.ACTIVE, ["b", "a"]) == {
        "router_status": {"status": "ACTIVE", "port_statuses": {"a": "ACTIVE", "b": "ACTIVE"}}
    }
    assert status_body(State.BOOTING, ["a"]) == {
        "router_status": {"status": "ALLOCATING", "port_statuses": {"a": "DOWN"}}
    }
    assert status_body(State.ERROR, [])["router_status"]["status"] == "ERROR"  # type: ignore[index]
    assert status_body(State.DELETED, ["a"]) is None
