"""Which router events a Neutron change causes (the plugin's pure decisions)."""

from __future__ import annotations

import pytest

from astara.neutron.events import (
    firewall_group_events,
    floatingip_events,
    port_forwarding_events,
    router_event,
)
from astara.neutron.status_api import (
    firewall_group_statuses_problem,
    port_statuses_problem,
    unknown_ids,
)

pytestmark = pytest.mark.unit


def _fip(router_id: str | None) -> dict[str, str | None]:
    return {"id": "fip1", "project_id": "p1", "router_id": router_id}


def test_router_change_names_the_router() -> None:
    event = router_event("router", "update", "r1", "p1")
    assert (event.event_type, event.resource_id, event.cause) == (
        "astara.router.update",
        "r1",
        "router r1 update",
    )


def test_interface_change_names_the_port_and_the_router() -> None:
    event = router_event("router_interface", "delete", "r1", "p1", "port9")
    assert event.resource_id == "port9"
    assert event.cause == "router_interface port9 delete on router r1"


def test_floatingip_created_on_a_router_concerns_that_router() -> None:
    [event] = floatingip_events("create", None, _fip("r1"))
    assert (event.event_type, event.router_id, event.resource_id) == (
        "astara.floatingip.create",
        "r1",
        "fip1",
    )


def test_floatingip_without_router_concerns_no_one() -> None:
    assert floatingip_events("create", None, _fip(None)) == []
    assert floatingip_events("update", _fip(None), _fip(None)) == []


def test_floatingip_moving_between_routers_concerns_both() -> None:
    events = floatingip_events("update", _fip("r1"), _fip("r2"))
    assert [(e.router_id, e.cause) for e in events] == [
        ("r1", "floatingip fip1 update (disassociated)"),
        ("r2", "floatingip fip1 update (associated)"),
    ]


def test_floatingip_update_on_the_same_router_is_one_event() -> None:
    [event] = floatingip_events("update", _fip("r1"), _fip("r1"))
    assert event.cause == "floatingip fip1 update"


def test_floatingip_deleted_concerns_its_last_router() -> None:
    [event] = floatingip_events("delete", _fip("r1"), None)
    assert (event.event_type, event.router_id) == ("astara.floatingip.delete", "r1")


def _forward(router_id: str | None) -> dict[str, str | None]:
    return {"id": "pf1", "floatingip_id": "fip1", "router_id": router_id}


def test_port_forwarding_changes_concern_the_routers_of_its_floating_ip() -> None:
    [created] = port_forwarding_events("create", None, _forward("r1"))
    assert (created.event_type, created.router_id, created.resource_id, created.cause) == (
        "astara.port_forwarding.create",
        "r1",
        "pf1",
        "port_forwarding pf1 create on floatingip fip1",
    )
    moved = port_forwarding_events("update", _forward("r1"), _forward("r2"))
    assert [e.router_id for e in moved] == ["r1", "r2"]
    [deleted] = port_forwarding_events("delete", _forward("r1"), None)
    assert deleted.event_type == "astara.port_forwarding.delete"
    assert port_forwarding_events("delete", _forward(None), None) == []


def test_a_firewall_group_change_concerns_each_router_it_is_on_once() -> None:
    events = firewall_group_events("update", "g1", "rule r9 p1", {"r2": "p", "r1": "p"})
    assert [(e.event_type, e.router_id, e.resource_id) for e in events] == [
        ("astara.firewall_group.update", "r1", "g1"),
        ("astara.firewall_group.update", "r2", "g1"),
    ]
    assert events[0].cause == "firewall_group g1 update (rule r9 p1)"
    assert firewall_group_events("delete", "g1", "", {}) == []


def test_firewall_group_statuses_are_those_an_appliance_decides() -> None:
    assert firewall_group_statuses_problem({"g": "ACTIVE", "h": "DOWN", "i": "ERROR"}) is None
    assert firewall_group_statuses_problem({"g": "INACTIVE"}) == (
        "status 'INACTIVE' of firewall group g is not one of ACTIVE, ERROR, DOWN"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"p1": "ACTIVE", "p2": "DOWN"}, None),
        ({}, None),
        ({"p1": "BUILD"}, "status 'BUILD' of port p1 is not one of ACTIVE, DOWN"),
        (["ACTIVE"], "'['ACTIVE']' is not an object of port id to status"),
    ],
)
def test_port_statuses_accept_only_active_or_down(value: object, problem: str | None) -> None:
    assert port_statuses_problem(value) == problem


def test_ports_outside_the_router_are_named() -> None:
    assert unknown_ids({"b": "DOWN", "a": "DOWN", "c": "UP"}, {"c"}) == ["a", "b"]
