"""Neutron's view of each router follows its appliance (the Astara plugin's status API).

``PUT /v2.0/astara/router_statuses/{router_id}`` sets the router's status (Neutron accepts only
ACTIVE, ALLOCATING and ERROR) and its interface and gateway ports' status (ACTIVE or DOWN).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


def status_body(state: State, port_ids: Sequence[str]) -> dict[str, Any] | None:
    """What to write for a state; None when Neutron has nothing to learn (deleted, unmanaged)."""
    status = NEUTRON_STATUS.get(state)
    if status is None:
        return None
    port_status = "ACTIVE" if state is State.ACTIVE else "DOWN"
    return {
        RESOURCE: {
            "status": status,
            "port_statuses": {port_id: port_status for port_id in sorted(port_ids)},
        }
    }


class NeutronStatusReporter:
    def __init__(self, connection: Any) -> None:
        self._network = connection.network

    def owns(self, router_id: str) -> bool:
        """Whether Astara's plugin says the router is Astara's (it answers 404 otherwise)."""
        response = self._network.get(f"{PATH_PREFIX}/{COLLECTION}/{router_id}")
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise RuntimeError(f"router {router_id}: status API answered {response.status_code}")
        return True

    def report(self, router_id: str, state: State, port_ids: Sequence[str]) -> None:
        body = status_body(state, port_ids)
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
