"""The router status API: names, attribute map and validation. Pure, no Neutron imports.

``GET /v2.0/astara/router_statuses/{router_id}`` shows, and ``PUT`` updates, the status Astara
reports for one of its routers::

    {"router_status": {"status": "ACTIVE",
                       "port_statuses": {"<interface or gateway port id>": "DOWN"}}}

``status`` becomes the Neutron router's status (Neutron accepts only ACTIVE, ALLOCATING and
ERROR); ``port_statuses`` sets the status of the router's interface and gateway ports (ACTIVE or
DOWN, mirroring the appliance's links); ``firewall_group_statuses`` sets the status of
neutron-fwaas firewall groups on the router's interfaces (ACTIVE, ERROR or DOWN, as its
appliance applied them). All are optional in a PUT. The response shows the router's status, the
status of all its interface and gateway ports and of the firewall groups on them. Routers that
Astara does not own are not found here. Show and update only; update needs the admin or
service role, show also allows a reader of the router's project (see policies).
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
# neutron-fwaas's statuses a router's appliance decides (INACTIVE, no ports, is fwaas's own).
FIREWALL_GROUP_STATUSES = ("ACTIVE", "ERROR", "DOWN")
FIREWALL_GROUP_STATUSES_VALIDATOR = "type:astara_firewall_group_statuses"

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
        "firewall_group_statuses": {
            "allow_post": False,
            "allow_put": True,
            "is_visible": True,
            "validate": {FIREWALL_GROUP_STATUSES_VALIDATOR: None},
        },
    }
}


def port_statuses_problem(value: Any, valid_values: Any = None) -> str | None:
    """Why value is not a mapping of port id to ACTIVE/DOWN, or None when it is.

    The signature is Neutron's validator convention (value, then an unused argument).
    """
    return _statuses_problem(value, "port", PORT_STATUSES)


def firewall_group_statuses_problem(value: Any, valid_values: Any = None) -> str | None:
    """Why value is not a mapping of firewall group id to ACTIVE/ERROR/DOWN, or None."""
    return _statuses_problem(value, "firewall group", FIREWALL_GROUP_STATUSES)


def _statuses_problem(value: Any, what: str, allowed: tuple[str, ...]) -> str | None:
    if not isinstance(value, dict):
        return f"'{value}' is not an object of {what} id to status"
    for key, status in value.items():
        if status not in allowed:
            return f"status '{status}' of {what} {key} is not one of {', '.join(allowed)}"
    return None


def unknown_ids(requested: dict[str, str], known: set[str]) -> list[str]:
    """The requested ids (of ports, of firewall groups) that are not the router's."""
    return sorted(set(requested) - known)
