"""Internal events, and the mapping from Neutron 29's notifications to them.

An event names one resource and what happened to it; it never carries Neutron's data, because
the worker re-reads the resource anyway (notifications miss changes Neutron makes internally).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from astara.drivers.router import ROUTER_OWNERS
from astara.neutron.protocol import ProtocolError, RouterEvent


class ResourceType(StrEnum):
    ROUTER = "router"
    # "Something in this project changed, the payload does not say which router": the worker
    # re-reads every router of the project.
    PROJECT = "project"


class EventAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    POLL = "poll"
    REBUILD = "rebuild"


@dataclass(frozen=True)
class Event:
    resource_type: ResourceType
    resource_id: str  # the router id; the project id for PROJECT events
    project_id: str | None
    action: EventAction
    cause: str  # the notification's event type, or who asked (e.g. "operator", "health")
    received_at: datetime
    instance_id: str | None = None  # health: the instance found dead; reconcile: vouched for
    # reconcile: the generation the instance's latest fresh heartbeat reported as applied
    reported_generation: int | None = None


# Ports whose changes no router configuration depends on (FIP ports have their own events;
# the appliance replaces Neutron's DHCP agent).
IGNORED_PORT_OWNERS = frozenset({"network:floatingip", "network:dhcp"})

_ROUTER_ACTIONS = {
    "router.create.end": EventAction.CREATE,
    "router.update.end": EventAction.UPDATE,
    "router.delete.end": EventAction.DELETE,
}
_PORT_EVENTS = frozenset({"port.create.end", "port.update.end", "port.delete.end"})
_FLOATINGIP_EVENTS = frozenset(
    {"floatingip.create.end", "floatingip.update.end", "floatingip.delete.end"}
)

# What Astara's Neutron plugin forwards itself (and more completely): with the plugin loaded,
# these notifications would only make the same work twice.
PLUGIN_COVERED = frozenset(
    {*_ROUTER_ACTIONS, "router.interface.create", "router.interface.delete", *_FLOATINGIP_EVENTS}
)


def from_plugin_event(
    event_type: str, payload: Mapping[str, Any], received_at: datetime | None = None
) -> list[Event]:
    """The router event Astara's Neutron plugin forwarded; [] for a malformed one."""
    try:
        forwarded = RouterEvent.from_notification(event_type, dict(payload))
    except ProtocolError:
        return []
    action = EventAction.UPDATE
    if forwarded.resource == "router" and forwarded.action in ("create", "delete"):
        action = EventAction(forwarded.action)
    return [
        Event(
            ResourceType.ROUTER,
            forwarded.router_id,
            forwarded.project_id or None,
            action,
            event_type,
            received_at or datetime.now(UTC),
        )
    ]


def from_notification(
    event_type: str, payload: Mapping[str, Any], received_at: datetime | None = None
) -> list[Event]:
    """The events a Neutron notification means; [] for those no router depends on."""
    at = received_at or datetime.now(UTC)

    def router(router_id: str | None, project_id: str | None, action: EventAction) -> list[Event]:
        if not router_id:
            return []
        return [Event(ResourceType.ROUTER, router_id, project_id, action, event_type, at)]

    def project(project_id: str | None) -> list[Event]:
        if not project_id:
            return []
        return [
            Event(ResourceType.PROJECT, project_id, project_id, EventAction.UPDATE, event_type, at)
        ]

    if event_type in _ROUTER_ACTIONS:
        body = _dict(payload, "router")
        router_id = body.get("id") or payload.get("router_id")
        return router(router_id, _project(body), _ROUTER_ACTIONS[event_type])
    if event_type in ("router.interface.create", "router.interface.delete"):
        body = _dict(payload, "router_interface")
        return router(body.get("id"), _project(body), EventAction.UPDATE)
    if event_type in _FLOATINGIP_EVENTS:
        body = _dict(payload, "floatingip")
        events = router(body.get("router_id"), _project(body), EventAction.UPDATE)
        # An update does not say which router the floating IP was on before (Neutron 29 sends
        # only the new state), so the project's routers are re-read to drop it there.
        if event_type == "floatingip.update.end":
            events += project(_project(body))
        return events
    if event_type in _PORT_EVENTS:
        body = _dict(payload, "port")
        owner = body.get("device_owner") or ""
        if owner in ROUTER_OWNERS:
            return router(body.get("device_id"), _project(body), EventAction.UPDATE)
        if owner in IGNORED_PORT_OWNERS:
            return []
        return project(_project(body))
    if event_type == "subnet.update.end":
        return project(_project(_dict(payload, "subnet")))
    if event_type == "network.update.end":
        # Its MTU or DNS domain: the routers of its project re-read it (those of other
        # projects on a shared network at their next resync).
        return project(_project(_dict(payload, "network")))
    return []


def _dict(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, Mapping) else {}


def _project(body: Mapping[str, Any]) -> str | None:
    found = body.get("project_id") or body.get("tenant_id")
    return str(found) if found else None
