"""Whether a router is Astara's: its L3 provider is Astara's driver (runs in neutron-server)."""

from __future__ import annotations

from typing import Any

from neutron_lib.exceptions import l3 as l3_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory

from astara.neutron.l3_driver import AstaraL3Driver


def is_astara_router(context: Any, router_id: str) -> bool:
    """False also when the router does not exist."""
    l3 = directory.get_plugin(plugin_constants.L3)
    try:
        provider = l3.l3_driver_controller.get_provider_for_router(context.elevated(), router_id)
    except l3_exc.RouterNotFound:
        return False
    return isinstance(provider, AstaraL3Driver)
