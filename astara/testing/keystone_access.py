"""A Keystone for tests: its clouds.yaml (entries ``astara-admin``, ``astara-service``,
``demo-admin``, ``demo-member``, ``demo-reader``, as the OpenStack test bed writes them), and
what the orchestrator and its clients need from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
from openstack.identity.v3._proxy import Proxy as IdentityV3

SERVICE_TYPE = "astara"


@dataclass(frozen=True)
class KeystoneAccess:
    clouds_yaml: Path

    @property
    def clouds(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = json.loads(self.clouds_yaml.read_text())["clouds"]
        return found

    @property
    def auth_url(self) -> str:
        return str(self.clouds["astara-admin"]["auth"]["auth_url"])

    def auth(self, cloud: str) -> dict[str, str]:
        found: dict[str, str] = self.clouds[cloud]["auth"]
        return found

    def connect(self, cloud: str = "astara-admin") -> openstack.connection.Connection:
        return openstack.connection.Connection(**self.clouds[cloud])

    def authtoken(self, cloud: str = "astara-service") -> dict[str, str]:
        """``[keystone_authtoken]`` for an orchestrator checking tokens as ``cloud``'s user."""
        auth = self.auth(cloud)
        return {
            "www_authenticate_uri": auth["auth_url"],
            "auth_type": "password",
            "auth_url": auth["auth_url"],
            "username": auth["username"],
            "password": auth["password"],
            "project_name": auth["project_name"],
            "user_domain_name": auth["user_domain_name"],
            "project_domain_name": auth["project_domain_name"],
            # Where the orchestrator reaches Keystone: the public URL is the one every bed has.
            "interface": "public",
        }

    def project_id(self, cloud: str) -> str:
        return str(self.connect(cloud).current_project_id)

    def register_api(self, url: str) -> None:
        """The management API in the catalog (service type ``astara``), at ``url``."""
        identity = self.connect().identity
        assert isinstance(identity, IdentityV3)  # noqa: S101 -- the bed's clouds are v3
        services = list(identity.services(type=SERVICE_TYPE))
        service = (
            services[0]
            if services
            else identity.create_service(
                name="astara", type=SERVICE_TYPE, description="Astara management API"
            )
        )
        region = self.clouds["astara-admin"].get("region_name", "RegionOne")
        existing = {e.interface: e for e in identity.endpoints(service_id=service.id)}
        for interface in ("public", "internal", "admin"):
            endpoint = existing.get(interface)
            if endpoint is None:
                identity.create_endpoint(
                    service_id=service.id, interface=interface, url=url, region_id=region
                )
            elif endpoint.url != url:
                identity.update_endpoint(endpoint, url=url)

    def clouds_yaml_for_clients(self, path: Path) -> None:
        """A clouds.yaml with the same entries, for ``openstack --os-cloud ...``."""
        path.touch(mode=0o600)
        path.write_text(json.dumps({"clouds": self.clouds}))
