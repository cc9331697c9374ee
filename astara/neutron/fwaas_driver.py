"""The FWaaS v2 service driver that hands firewall groups on Astara routers to Astara.

Configure neutron-fwaas (``service_plugins = ...,firewall_v2``) with
``[service_providers] service_provider =
FIREWALL_V2:astara:astara.neutron.fwaas_driver.AstaraFirewallDriver:default``.

neutron-fwaas keeps the groups, policies and rules in its database and calls this driver after
each change. The driver accepts router interface ports of Astara routers only (a port of
another router, or a VM port, is refused with neutron-fwaas's own 400), and forwards a
``firewall_group`` event to the orchestrator for every Astara router whose interfaces a
changed group is (or was) on, also when the change is to a policy or rule the group uses. The
orchestrator renders the groups into the router's appliance and writes each group's status
back through Astara's status API (ACTIVE, ERROR, or DOWN for a group whose admin state is
down). A group on no port is INACTIVE, set here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from neutron_fwaas.services.firewall.service_drivers import driver_api
from neutron_lib import constants
from neutron_lib.plugins import directory
from oslo_config import cfg
from oslo_log import log as logging

from astara.neutron.events import firewall_group_events
from astara.neutron.forwarder import EventForwarder
from astara.neutron.ownership import is_astara_router

LOG = logging.getLogger(__name__)

DRIVER_PATH = "astara.neutron.fwaas_driver.AstaraFirewallDriver"
# What of a group its routers apply: a change to anything else (its name) leaves its status.
APPLIED = ("ports", "ingress_firewall_policy_id", "egress_firewall_policy_id", "admin_state_up")


class AstaraFirewallDriver(driver_api.FirewallDriverDB):
    def __init__(self, service_plugin: Any, forwarder: EventForwarder | None = None) -> None:
        super().__init__(service_plugin)
        self._forwarder = forwarder or EventForwarder(cfg.CONF)

    # neutron-fwaas asks which ports a group may be put on.
    def is_supported_l2_port(self, port: dict[str, Any]) -> bool:
        return False

    def is_supported_l3_port(self, port: dict[str, Any]) -> bool:
        # Called without a context: the check is made with an admin one.
        from neutron_lib import context as n_context

        return is_astara_router(n_context.get_admin_context(), port["device_id"])

    def start_rpc_listener(self) -> list[Any]:
        return []

    # --- groups ---------------------------------------------------------------------------
    def create_firewall_group_precommit(self, context: Any, firewall_group: dict[str, Any]) -> None:
        firewall_group["status"] = _pending(firewall_group, constants.PENDING_CREATE)

    def create_firewall_group_postcommit(
        self, context: Any, firewall_group: dict[str, Any]
    ) -> None:
        self._notify(context, "create", firewall_group["id"], "", firewall_group["ports"])

    def update_firewall_group_precommit(
        self, context: Any, old_firewall_group: dict[str, Any], new_firewall_group: dict[str, Any]
    ) -> None:
        if any(old_firewall_group.get(key) != new_firewall_group.get(key) for key in APPLIED):
            new_firewall_group["status"] = _pending(new_firewall_group, constants.PENDING_UPDATE)

    def update_firewall_group_postcommit(
        self, context: Any, old_firewall_group: dict[str, Any], new_firewall_group: dict[str, Any]
    ) -> None:
        ports = [*old_firewall_group["ports"], *new_firewall_group["ports"]]
        self._notify(context, "update", new_firewall_group["id"], "", ports)

    def delete_firewall_group_postcommit(
        self, context: Any, firewall_group: dict[str, Any]
    ) -> None:
        self._notify(context, "delete", firewall_group["id"], "", firewall_group["ports"])

    # --- what groups use ------------------------------------------------------------------
    def update_firewall_policy_postcommit(
        self, context: Any, old_firewall_policy: dict[str, Any], new_firewall_policy: dict[str, Any]
    ) -> None:
        self._policies_changed(context, [new_firewall_policy["id"]], "policy")

    def insert_rule_postcommit(self, context: Any, policy_id: str, rule_info: Any) -> None:
        self._policies_changed(context, [policy_id], "rule inserted into policy")

    def remove_rule_postcommit(self, context: Any, policy_id: str, rule_info: Any) -> None:
        self._policies_changed(context, [policy_id], "rule removed from policy")

    def update_firewall_rule_postcommit(
        self, context: Any, old_firewall_rule: dict[str, Any], new_firewall_rule: dict[str, Any]
    ) -> None:
        policies = new_firewall_rule.get("firewall_policy_id") or []
        self._policies_changed(context, policies, f"rule {new_firewall_rule['id']}")

    def _policies_changed(self, context: Any, policy_ids: Iterable[str], why: str) -> None:
        admin = context.elevated()
        for policy_id in policy_ids:
            ingress, egress = self.firewall_db.get_fwgs_with_policy(admin, policy_id)
            for group_id in dict.fromkeys([*ingress, *egress]):
                group = self.firewall_db.get_firewall_group(admin, group_id)
                ports = list(group.ports)  # port ids
                self._notify(context, "update", group_id, f"{why} {policy_id}", ports)

    def _notify(
        self, context: Any, action: str, group_id: str, why: str, port_ids: Iterable[str]
    ) -> None:
        routers = self._astara_routers(context, port_ids)
        for event in firewall_group_events(action, group_id, why, routers):
            LOG.debug("Forwarding %s for router %s", event.event_type, event.router_id)
            self._forwarder.send(context.to_dict(), event)

    def _astara_routers(self, context: Any, port_ids: Iterable[str]) -> dict[str, str]:
        """Astara's routers (id -> project) among the devices of these ports."""
        wanted = sorted(set(port_ids))
        if not wanted:
            return {}
        admin = context.elevated()
        ports = directory.get_plugin().get_ports(
            admin, filters={"id": wanted}, fields=["device_id", "project_id"]
        )
        routers = {p["device_id"]: p["project_id"] for p in ports if p["device_id"]}
        return {r: project for r, project in routers.items() if is_astara_router(admin, r)}


def _pending(firewall_group: dict[str, Any], pending: str) -> str:
    """A group on ports waits for its routers; one on none is INACTIVE (nothing to apply)."""
    return pending if firewall_group["ports"] else constants.INACTIVE
