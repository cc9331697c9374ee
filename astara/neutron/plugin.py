"""The small service plugin behind the router status API (``service_plugins = ...,astara``).

It stores nothing of its own: the router status lives in Neutron's router, the port statuses
in Neutron's ports. See ``astara.neutron.status_api`` for the API.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import webob.exc
from neutron.api import extensions
from neutron.objects import router as router_obj
from neutron_lib import constants
from neutron_lib import exceptions as n_exc
from neutron_lib.db import api as db_api
from neutron_lib.exceptions import l3 as l3_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from neutron_lib.services import base as service_base

from astara.neutron import extensions as astara_extensions
from astara.neutron import status_api
from astara.neutron.ownership import is_astara_router

FIREWALL_V2 = "FIREWALL_V2"  # neutron-fwaas's plugin type, when it is loaded
ROUTER_PORT_OWNERS = (constants.DEVICE_OWNER_ROUTER_INTF, constants.DEVICE_OWNER_ROUTER_GW)


class AstaraStatusPlugin(service_base.ServicePluginBase):
    supported_extension_aliases: ClassVar[list[str]] = [status_api.ALIAS]

    def __init__(self) -> None:
        super().__init__()
        extensions.append_api_extensions_path([os.path.dirname(astara_extensions.__file__)])

    @classmethod
    def get_plugin_type(cls) -> str:
        return status_api.PLUGIN_TYPE

    def get_plugin_description(self) -> str:
        return status_api.DESCRIPTION

    def get_router_status(
        self, context: Any, id: str, fields: list[str] | None = None
    ) -> dict[str, Any]:
        router = self._astara_router(context, id)
        return self._show(context, router, fields)

    def update_router_status(
        self, context: Any, id: str, router_status: dict[str, Any]
    ) -> dict[str, Any]:
        body = router_status[status_api.RESOURCE]
        router = self._astara_router(context, id)
        requested = body.get("port_statuses") or {}
        ports = self._router_ports(context, id)
        unknown = status_api.unknown_ids(requested, {p["id"] for p in ports})
        if unknown:
            raise n_exc.BadRequest(
                resource=status_api.RESOURCE,
                msg=f"port_statuses: not interface or gateway ports of router {id}: "
                + ", ".join(unknown),
            )
        admin = context.elevated()
        status = body.get("status")
        if status in status_api.ROUTER_STATUSES and status != router["status"]:
            with db_api.CONTEXT_WRITER.using(admin):
                router_obj.Router.update_object(admin, {"status": status}, id=id)
        core = directory.get_plugin()
        for port_id, port_status in requested.items():
            core.update_port_status(admin, port_id, port_status)
        self._set_group_statuses(admin, id, ports, body.get("firewall_group_statuses") or {})
        return self._show(context, self._l3().get_router(admin, id), None)

    def _set_group_statuses(
        self, admin: Any, router_id: str, ports: list[dict[str, Any]], requested: dict[str, str]
    ) -> None:
        if not requested:
            return
        firewall = directory.get_plugin(FIREWALL_V2)
        groups = _groups_on(firewall, admin, ports)
        unknown = status_api.unknown_ids(requested, set(groups))
        if unknown:
            raise n_exc.BadRequest(
                resource=status_api.RESOURCE,
                msg=f"firewall_group_statuses: not firewall groups on router {router_id}: "
                + ", ".join(unknown),
            )
        for group_id, group_status in requested.items():
            if groups[group_id] != group_status:
                firewall.driver.firewall_db.update_firewall_group_status(
                    admin, group_id, group_status
                )

    # Neutron routes every verb of a collection to the plugin; without these it answers 500.
    def get_router_statuses(self, context: Any, *args: Any, **kwargs: Any) -> list[Any]:
        raise _not_allowed("GET on the collection")

    def create_router_status(self, context: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise _not_allowed("POST")

    def delete_router_status(self, context: Any, id: str, *args: Any, **kwargs: Any) -> None:
        self._astara_router(context, id)  # 404 for a router that is not Astara's
        raise _not_allowed("DELETE")

    def _l3(self) -> Any:
        return directory.get_plugin(plugin_constants.L3)

    def _astara_router(self, context: Any, router_id: str) -> dict[str, Any]:
        """The router, or 404 when it does not exist or Astara does not own it."""
        router: dict[str, Any] = self._l3().get_router(context.elevated(), router_id)
        if not is_astara_router(context, router_id):
            raise l3_exc.RouterNotFound(router_id=router_id)
        return router

    def _router_ports(self, context: Any, router_id: str) -> list[dict[str, Any]]:
        ports: list[dict[str, Any]] = directory.get_plugin().get_ports(
            context.elevated(),
            filters={"device_id": [router_id], "device_owner": list(ROUTER_PORT_OWNERS)},
        )
        return ports

    def _show(
        self, context: Any, router: dict[str, Any], fields: list[str] | None
    ) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "id": router["id"],
            "project_id": router["project_id"],
            "status": router["status"],
        }
        # Ports and groups are read only when asked for (the orchestrator's ownership check
        # asks for the id alone).
        wanted = set(fields or ("port_statuses", "firewall_group_statuses"))
        if wanted & {"port_statuses", "firewall_group_statuses"}:
            ports = self._router_ports(context, router["id"])
            shown["port_statuses"] = {p["id"]: p["status"] for p in ports}
            if "firewall_group_statuses" in wanted:
                firewall = directory.get_plugin(FIREWALL_V2)
                shown["firewall_group_statuses"] = _groups_on(firewall, context.elevated(), ports)
        return {k: v for k, v in shown.items() if not fields or k in fields}


def _groups_on(firewall: Any, admin: Any, ports: list[dict[str, Any]]) -> dict[str, str]:
    """Status of each neutron-fwaas firewall group on one of the ports (none without fwaas)."""
    if firewall is None:
        return {}
    ids = {p["id"] for p in ports}
    return {
        group["id"]: group["status"]
        for group in firewall.get_firewall_groups(admin, fields=["id", "ports", "status"])
        if ids & set(group["ports"])
    }


def _not_allowed(what: str) -> webob.exc.HTTPMethodNotAllowed:
    return webob.exc.HTTPMethodNotAllowed(
        f"{what} is not supported: {status_api.COLLECTION} has show and update only"
    )
