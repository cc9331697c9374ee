"""The router status API: names, attribute map and validation. Pure, no Neutron imports.

``GET /v2.0/astara/router_statuses/{router_id}`` shows, and ``PUT`` updates, the status Astara
reports for one of its routers::

    {"router_status": {"status": "ACTIVE",
                       "port_statuses": {"<interface or gateway port id>": "DOWN"}}}

``status`` becomes the Neutron router's status (Neutron accepts only ACTIVE, ALLOCATING and
ERROR); ``port_statuses`` sets the status of the router's interface and gateway ports (ACTIVE or
DOWN, mirroring the appliance's links). Both are optional in a PUT. The response shows the
router's status and the status of all its interface and gateway ports. Routers that Astara does
not own are not found here. Show and update only; update needs the admin or service role, show
also allows a reader of the router's project (see policies).
"""

from __future__ import annotations

from typing import Any

ALIAS = "astara-router-status"
NAME = "Astara router status"
DESCRIPTION = "Show and set the status of Astara routers and their ports"
UPDATED = "2026-11-25T00:00:00-00:00"
PLUGIN_TYPE = "ASTARA"
PATH_PREFIX = "/astara"
COLLECTION = "router_statuses"
RESOURCE = "router_status"

ROUTER_STATUSES = ("ACTIVE", "ALLOCATING", "ERROR")
PORT_STATUSES = ("ACTIVE", "DOWN")
PORT_STATUSES_VALIDATOR = "type:astara_port_statuses"

RESOURCE_ATTRIBUTE_MAP: dict[str, dict[str, dict[str, Any]]] = {
    COLLECTION: {
        "id": {"allow_post": False, "allow_put": False, "is_visible": True},
        # Neutron adds the caller's project to every POST body: accepted here so that a POST
        # reaches the plugin, which answers 405 (it is refused as a whole, never stored).
        "project_id": {"allow_post": True, "allow_put": False, "is_visible": True},
        "status": {
            "allow_post": False,
            "allow_put": True,
            "is_visible": True,
            "validate": {"type:values": list(ROUTER_STATUSES)},
        },
        "port_statuses": {
            "allow_post": False,
            "allow_put": True,
            "is_visible": True,
            "validate": {PORT_STATUSES_VALIDATOR: None},
        },
    }
}


def port_statuses_problem(value: Any, valid_values: Any = None) -> str | None:
    """Why value is not a mapping of port id to ACTIVE/DOWN, or None when it is.

    The signature is Neutron's validator convention (value, then an unused argument).
    """
    if not isinstance(value, dict):
        return f"'{value}' is not an object of port id to status"
    for port_id, status in value.items():
        if status not in PORT_STATUSES:
            return f"status '{status}' of port {port_id} is not one of {', '.join(PORT_STATUSES)}"
    return None


def unknown_ports(requested: dict[str, str], router_ports: set[str]) -> list[str]:
    """The requested port ids that are not interface or gateway ports of the router."""
    return sorted(set(requested) - router_ports)
