"""Neutron's view of each router follows its appliance (the Astara plugin's status API).

``PUT /v2.0/astara/router_statuses/{router_id}`` sets the router's status (Neutron accepts only
ACTIVE, ALLOCATING and ERROR), its interface and gateway ports' status (ACTIVE or DOWN) and that
of the firewall groups on its interfaces (ACTIVE, ERROR or DOWN).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from astara.neutron.status_api import COLLECTION, PATH_PREFIX, RESOURCE
from astara.orchestrator.state import State

LOG = logging.getLogger(__name__)

NEUTRON_STATUS = {
    State.ACTIVE: "ACTIVE",
    State.BOOTING: "ALLOCATING",
    State.CONFIGURING: "ALLOCATING",
    State.BACKOFF: "ALLOCATING",
    State.ERROR: "ERROR",
}


def group_statuses(state: State, rendered: Mapping[str, str]) -> dict[str, str]:
    """The firewall groups' statuses to write for a router state (``rendered``: what the
    router's document made of each group). Only an ACTIVE router has applied its groups; one
    in ERROR enforces none of them as meant, so they are in ERROR too; otherwise the groups
    keep the status they have until the router settles."""
    if state is State.ACTIVE:
        return dict(rendered)
    if state is State.ERROR:
        return dict.fromkeys(rendered, "ERROR")
    return {}


def status_body(
    state: State, port_ids: Sequence[str], firewall_groups: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """What to write for a state; None when Neutron has nothing to learn (deleted, unmanaged)."""
    status = NEUTRON_STATUS.get(state)
    if status is None:
        return None
    port_status = "ACTIVE" if state is State.ACTIVE else "DOWN"
    body: dict[str, Any] = {
        "status": status,
        "port_statuses": {port_id: port_status for port_id in sorted(port_ids)},
    }
    groups = group_statuses(state, firewall_groups or {})
    if groups:
        body["firewall_group_statuses"] = dict(sorted(groups.items()))
    return {RESOURCE: body}


class NeutronStatusReporter:
    def __init__(self, connection: Any) -> None:
        self._network = connection.network

    def owns(self, router_id: str) -> bool:
        """Whether Astara's plugin says the router is Astara's (it answers 404 otherwise)."""
        # The id alone: the plugin then reads none of the router's ports or groups.
        response = self._network.get(f"{PATH_PREFIX}/{COLLECTION}/{router_id}?fields=id")
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise RuntimeError(f"router {router_id}: status API answered {response.status_code}")
        return True

    def report(
        self,
        router_id: str,
        state: State,
        port_ids: Sequence[str],
        firewall_groups: Mapping[str, str],
    ) -> None:
        body = status_body(state, port_ids, firewall_groups)
        if body is None:
            return
        path = f"{PATH_PREFIX}/{COLLECTION}/{router_id}"
        response = self._network.put(path, json=body)
        if response.status_code == 404:
            LOG.debug("router %s: not an Astara router in Neutron; status not written", router_id)
        elif response.status_code >= 400:
            LOG.warning(
                "router %s: writing status %s to Neutron failed: HTTP %s %s",
                router_id,
                body[RESOURCE]["status"],
                response.status_code,
                response.text[:200],
            )
