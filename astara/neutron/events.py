"""Which router events a change in Neutron causes: pure decisions, no Neutron imports.

The L3 driver extracts plain values from Neutron's callback payloads and calls these; it then
keeps only the events of routers Astara owns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from astara.neutron.protocol import RouterEvent


def router_event(
    resource: str, action: str, router_id: str, project_id: str, resource_id: str = ""
) -> RouterEvent:
    """The event for a change to one router or to one of its interfaces or gateway."""
    changed = resource_id or router_id
    cause = f"{resource} {changed} {action}"
    if resource != "router":
        cause += f" on router {router_id}"
    return RouterEvent(resource, action, router_id, project_id, changed, cause)


def floatingip_events(
    action: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> list[RouterEvent]:
    """Events for every router a floating IP change touches.

    An association that moves from one router to another concerns both: the old one must
    drop the NAT rules and the new one add them. A floating IP on no router concerns no one.
    """
    fip = new if new is not None else old
    if fip is None:
        return []
    old_router = (old or {}).get("router_id")
    new_router = (new or {}).get("router_id")
    events = []
    for router_id in _routers(old, new):
        cause = f"floatingip {fip['id']} {action}"
        if old_router != new_router and action == "update":
            cause += " (disassociated)" if router_id == old_router else " (associated)"
        events.append(
            RouterEvent(
                "floatingip", action, router_id, str(fip.get("project_id") or ""), fip["id"], cause
            )
        )
    return events


def port_forwarding_events(
    action: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> list[RouterEvent]:
    """Events for the routers of a port forwarding's floating IP (before and after).

    Neutron gives a port forwarding no project of its own; the orchestrator reads the rest
    from the router."""
    forward = new if new is not None else old
    if forward is None:
        return []
    cause = f"port_forwarding {forward['id']} {action} on floatingip {forward['floatingip_id']}"
    return [
        RouterEvent("port_forwarding", action, router_id, "", forward["id"], cause)
        for router_id in _routers(old, new)
    ]


def _routers(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """The routers a resource was and is on, once each, in that order."""
    found = [(state or {}).get("router_id") for state in (old, new)]
    return [router_id for router_id in dict.fromkeys(found) if router_id]


def firewall_group_events(
    action: str, group_id: str, why: str, routers: Mapping[str, str]
) -> list[RouterEvent]:
    """Events for the routers (id -> project) whose interfaces a firewall group is on or was
    on, for a change of the group itself or of a policy or rule it uses (``why``)."""
    cause = f"firewall_group {group_id} {action}" + (f" ({why})" if why else "")
    return [
        RouterEvent("firewall_group", action, router_id, project_id, group_id, cause)
        for router_id, project_id in sorted(routers.items())
    ]
