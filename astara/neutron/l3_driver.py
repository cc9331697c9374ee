"""The L3 service-provider driver that hands routers to Astara instead of Neutron's L3 agents.

Configure it in ``[service_providers]`` as
``L3_ROUTER_NAT:astara:astara.neutron.l3_driver.AstaraL3Driver[:default]``, and/or name the
same class path in a flavor profile (``flavors`` service plugin) to run Astara beside other
providers.

- ``use_integrated_agent_scheduler = False``: Neutron never binds Astara routers to L3 agents
  (``router_supports_scheduling`` is false for them).
- ``distributed_support = UNSUPPORTED``: an appliance is not a DVR router.
- ``ha_support = UNSUPPORTED``, on purpose. The stock ``L3RouterPlugin`` keeps its HA mixin,
  which creates a per-project HA network for every ``ha=True`` router whatever its provider;
  accepting ``ha=True`` here would leave that network behind unused. So ``ha=True`` routers go
  to Neutron's own ``ha`` provider (or are refused when they ask for an Astara flavor), and
  appliance HA pairs are to be chosen through a flavor profile's metainfo instead.

After each commit (AFTER_* callbacks only: a PRECOMMIT event may still roll back) the driver
forwards the router, interface, gateway, floating-IP and port-forwarding events of the routers
it owns to the orchestrator (see ``astara.neutron.protocol``). Routers of other providers are
left alone.
"""

from __future__ import annotations

import threading
from typing import Any

from neutron.services.l3_router.service_providers import base
from neutron.services.portforwarding.constants import PORT_FORWARDING
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.exceptions import l3 as l3_exc
from oslo_config import cfg
from oslo_log import log as logging

from astara.neutron.events import floatingip_events, port_forwarding_events, router_event
from astara.neutron.forwarder import EventForwarder
from astara.neutron.protocol import RouterEvent

LOG = logging.getLogger(__name__)

DRIVER_PATH = "astara.neutron.l3_driver.AstaraL3Driver"

_ACTIONS = {
    events.AFTER_CREATE: "create",
    events.AFTER_UPDATE: "update",
    events.AFTER_DELETE: "delete",
}


@registry.has_registry_receivers
class AstaraL3Driver(base.L3ServiceProvider):
    ha_support = base.UNSUPPORTED
    distributed_support = base.UNSUPPORTED
    use_integrated_agent_scheduler = False

    def __init__(self, l3plugin: Any, forwarder: EventForwarder | None = None) -> None:
        super().__init__(l3plugin)
        self._forwarder = forwarder or EventForwarder(cfg.CONF)
        # A router's provider association is removed in PRECOMMIT_DELETE, so ownership is
        # noted there and read back in AFTER_DELETE.
        self._deleting: set[str] = set()
        self._deleting_lock = threading.Lock()

    def owns_router(self, context: Any, router_id: str | None) -> bool:
        try:
            return bool(super().owns_router(context.elevated(), router_id))
        except l3_exc.RouterNotFound:
            return False

    def _forward(self, context: Any, event: RouterEvent) -> None:
        LOG.debug("Forwarding %s for router %s", event.event_type, event.router_id)
        self._forwarder.send(context.to_dict(), event)

    @registry.receives(resources.ROUTER, [events.AFTER_CREATE, events.AFTER_UPDATE])
    def _router_changed(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        if self.owns_router(payload.context, payload.resource_id):
            router = payload.latest_state
            self._forward(
                payload.context,
                router_event("router", _ACTIONS[event], payload.resource_id, router["project_id"]),
            )

    @registry.receives(resources.ROUTER, [events.PRECOMMIT_DELETE])
    def _router_deleting(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        if self.owns_router(payload.context, payload.resource_id):
            with self._deleting_lock:
                self._deleting.add(payload.resource_id)

    @registry.receives(resources.ROUTER, [events.AFTER_DELETE])
    def _router_deleted(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        with self._deleting_lock:
            if payload.resource_id not in self._deleting:
                return
            self._deleting.discard(payload.resource_id)
        router = payload.states[0]
        self._forward(
            payload.context,
            router_event("router", "delete", payload.resource_id, router["project_id"]),
        )

    @registry.receives(resources.ROUTER_INTERFACE, [events.AFTER_CREATE, events.AFTER_DELETE])
    def _interface_changed(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        if self.owns_router(payload.context, payload.resource_id):
            port = payload.metadata.get("port") or {}
            self._forward(
                payload.context,
                router_event(
                    "router_interface",
                    _ACTIONS[event],
                    payload.resource_id,
                    payload.states[0].project_id,
                    port.get("id", ""),
                ),
            )

    @registry.receives(resources.ROUTER_GATEWAY, [events.AFTER_CREATE, events.AFTER_DELETE])
    def _gateway_changed(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        if self.owns_router(payload.context, payload.resource_id):
            self._forward(
                payload.context,
                router_event(
                    "router_gateway",
                    _ACTIONS[event],
                    payload.resource_id,
                    payload.states[0].project_id,
                    payload.metadata.get("network_id") or "",
                ),
            )

    @registry.receives(
        resources.FLOATING_IP, [events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE]
    )
    def _floatingip_changed(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        action = _ACTIONS[event]
        old = payload.states[0] if action != "create" else None
        new = payload.latest_state if action != "delete" else None
        for forwarded in floatingip_events(action, old, new):
            if self.owns_router(payload.context, forwarded.router_id):
                self._forward(payload.context, forwarded)

    # Published by Neutron's port_forwarding service plugin, with its objects as the states.
    @registry.receives(
        PORT_FORWARDING, [events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE]
    )
    def _port_forwarding_changed(
        self, resource: str, event: str, trigger: Any, payload: Any
    ) -> None:
        action = _ACTIONS[event]
        old = _forward_fields(payload.states[0]) if action != "create" else None
        new = _forward_fields(payload.latest_state) if action != "delete" else None
        for forwarded in port_forwarding_events(action, old, new):
            if self.owns_router(payload.context, forwarded.router_id):
                self._forward(payload.context, forwarded)


def _forward_fields(forward: Any) -> dict[str, Any]:
    """What the event needs of a PortForwarding object (its router comes from its FIP)."""
    return {
        "id": forward.id,
        "floatingip_id": forward.floatingip_id,
        "router_id": forward.router_id,
    }
