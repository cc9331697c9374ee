"""The wire format of the events Astara's Neutron plugin forwards to the orchestrator.

Imported on both sides: by the plugin inside neutron-server's venv and by the orchestrator in
Astara's own venv, so it depends on the standard library only.

Transport: an oslo.messaging notification (``messagingv2`` envelope, priority ``info``) sent
with neutron-server's own notification transport, so it lands in Neutron's control exchange
(``neutron`` unless the operator changed ``control_exchange``) under the topic
``astara-neutron-events``: the routing key is ``astara-neutron-events.info``. The orchestrator
listens with ``Target(exchange=EXCHANGE, topic=TOPIC)`` in a pool of its own. Neutron's
``[oslo_messaging_notifications] driver`` does not affect these events: the plugin always sends
them.

Message: ``event_type`` is one of ``EVENT_TYPES`` (``astara.<resource>.<action>``); the payload
is ``RouterEvent.to_payload()``: the router the orchestrator must reconcile, its project, the
resource that changed and a short human-readable cause. The message's context carries the
caller's request ids, user and project only, to trace a change; never the caller's token or
roles (the orchestrator acts with its own credentials).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXCHANGE = "neutron"
TOPIC = "astara-neutron-events"
PUBLISHER = "astara-neutron"
VERSION = 1

RESOURCES = (
    "router",
    "router_interface",
    "router_gateway",
    "floatingip",
    "port_forwarding",
    "firewall_group",
)
ACTIONS = ("create", "update", "delete")
# Interfaces and gateways are only added or removed; routers and floating IPs also change.
EVENT_TYPES = frozenset(
    f"astara.{resource}.{action}"
    for resource in RESOURCES
    for action in ACTIONS
    if not (resource in ("router_interface", "router_gateway") and action == "update")
)


class ProtocolError(ValueError):
    """A message that is not a valid Astara plugin event."""


@dataclass(frozen=True)
class RouterEvent:
    """One change that concerns one Astara router."""

    resource: str
    action: str
    router_id: str
    project_id: str
    resource_id: str
    cause: str

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise ProtocolError(f"unknown event type {self.event_type!r}")
        if not self.router_id:
            raise ProtocolError("router_id is empty")

    @property
    def event_type(self) -> str:
        return f"astara.{self.resource}.{self.action}"

    def to_payload(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "router_id": self.router_id,
            "project_id": self.project_id,
            "resource": self.resource,
            "resource_id": self.resource_id,
            "action": self.action,
            "cause": self.cause,
        }

    @classmethod
    def from_notification(cls, event_type: str, payload: Any) -> RouterEvent:
        """Parse what a notification listener received; ProtocolError when it does not fit."""
        if not isinstance(payload, dict):
            raise ProtocolError(f"payload is {type(payload).__name__}, not an object")
        if payload.get("version") != VERSION:
            raise ProtocolError(f"unsupported version {payload.get('version')!r}")
        fields = ("router_id", "project_id", "resource", "resource_id", "action", "cause")
        values: dict[str, Any] = {name: payload.get(name) for name in fields}
        wrong = [name for name, value in values.items() if not isinstance(value, str)]
        if wrong:
            raise ProtocolError(f"missing or non-string fields: {', '.join(wrong)}")
        event = cls(**values)
        if event.event_type != event_type:
            raise ProtocolError(f"event type {event_type!r} does not match its payload")
        return event
