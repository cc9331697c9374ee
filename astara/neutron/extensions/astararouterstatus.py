"""Descriptor of the router status API (``astara.neutron.status_api`` holds its definition).

Neutron finds the descriptor class by this module's name, capitalised.
"""

from __future__ import annotations

from typing import Any

from neutron.api import extensions
from neutron.api.v2 import base
from neutron_lib.api import extensions as api_extensions
from neutron_lib.api import validators
from neutron_lib.plugins import directory

from astara.neutron import status_api

# Neutron may load this module more than once; add_validator accepts the same function again.
validators.add_validator(status_api.PORT_STATUSES_VALIDATOR, status_api.port_statuses_problem)
validators.add_validator(
    status_api.FIREWALL_GROUP_STATUSES_VALIDATOR, status_api.firewall_group_statuses_problem
)


class Astararouterstatus(api_extensions.ExtensionDescriptor):
    @classmethod
    def get_name(cls) -> str:
        return status_api.NAME

    @classmethod
    def get_alias(cls) -> str:
        return status_api.ALIAS

    @classmethod
    def get_description(cls) -> str:
        return status_api.DESCRIPTION

    @classmethod
    def get_updated(cls) -> str:
        return status_api.UPDATED

    @classmethod
    def get_resources(cls) -> list[Any]:
        plugin = directory.get_plugin(status_api.PLUGIN_TYPE)
        params = status_api.RESOURCE_ATTRIBUTE_MAP[status_api.COLLECTION]
        controller = base.create_resource(
            status_api.COLLECTION, status_api.RESOURCE, plugin, params, allow_bulk=False
        )
        return [
            extensions.ResourceExtension(
                status_api.COLLECTION,
                controller,
                path_prefix=status_api.PATH_PREFIX,
                attr_map=params,
            )
        ]

    def get_extended_resources(self, version: str) -> dict[str, Any]:
        return status_api.RESOURCE_ATTRIBUTE_MAP if version == "2.0" else {}
