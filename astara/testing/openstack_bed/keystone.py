"""Keystone's users, projects, roles and catalog for the OpenStack bed, and its clouds.yaml.

``keystone-manage bootstrap`` makes the admin user and project, the roles (admin, member,
reader, service) and Keystone's own endpoint; ``provision`` adds the rest through the API as
the admin: the ``service`` project with one user per service and Astara's ``astara`` user
(admin and service roles), the ``demo`` project with a member, a reader and an admin, and the
catalog. Everything is looked up before it is made, so running it twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openstack
from openstack.identity.v3._proxy import Proxy as IdentityV3

from astara.testing.openstack_bed.config import (
    DEMO_USERS,
    REGION,
    SERVICE_PROJECT,
    SERVICE_USERS,
    Layout,
)

DEMO_PROJECT = "demo"
ADMIN = "admin"
# Catalog entries: service type, service name, the layout's port name, path.
CATALOG = (
    ("compute", "nova", "nova", "/v2.1"),
    ("network", "neutron", "neutron", ""),
    ("image", "glance", "glance", ""),
    ("placement", "placement", "placement", ""),
)
# clouds.yaml entry name -> (user, project).
CLOUDS = {
    "astara-admin": (ADMIN, ADMIN),
    "astara-service": ("astara", SERVICE_PROJECT),
    **{name: (name, DEMO_PROJECT) for name in DEMO_USERS},
}


def cloud_entry(layout: Layout, user: str, project: str) -> dict[str, Any]:
    return {
        "auth": {
            "auth_url": layout.auth_url,
            "username": user,
            "password": layout.password(user),
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": REGION,
        "identity_api_version": "3",
        "interface": "public",
    }


def clouds_yaml(layout: Layout) -> str:
    """clouds.yaml with one entry per user (``astara-admin``, ``astara-service``, demo-*).

    Written as JSON, which is YAML too.
    """
    clouds = {name: cloud_entry(layout, *who) for name, who in CLOUDS.items()}
    return json.dumps({"clouds": clouds}, indent=2, sort_keys=True) + "\n"


def write_clouds_yaml(layout: Layout, path: Path) -> None:
    path.touch(mode=0o600)
    path.write_text(clouds_yaml(layout))


def connect(layout: Layout, cloud: str = "astara-admin") -> openstack.connection.Connection:
    return openstack.connection.Connection(**cloud_entry(layout, *CLOUDS[cloud]))


def provision(layout: Layout) -> None:
    conn = connect(layout)
    identity = _identity(conn)
    domain = identity.find_domain("default", ignore_missing=False)
    roles = {role.name: role for role in identity.roles()}
    projects = {
        name: identity.find_project(name, domain_id=domain.id)
        or identity.create_project(name=name, domain_id=domain.id)
        for name in (SERVICE_PROJECT, DEMO_PROJECT)
    }
    members: dict[str, tuple[str, tuple[str, ...]]] = {
        **{user: (SERVICE_PROJECT, ("admin", "service")) for user in SERVICE_USERS},
        **{user: (DEMO_PROJECT, (role,)) for user, role in DEMO_USERS.items()},
    }
    for name, (project, granted) in members.items():
        user = identity.find_user(name) or identity.create_user(
            name=name, password=layout.password(name), domain_id=domain.id
        )
        for role in granted:
            identity.assign_project_role_to_user(projects[project], user, roles[role])
    _catalog(conn, layout)


def _identity(conn: openstack.connection.Connection) -> IdentityV3:
    identity = conn.identity
    assert isinstance(identity, IdentityV3)  # noqa: S101 -- the bed's clouds are v3
    return identity


def _catalog(conn: openstack.connection.Connection, layout: Layout) -> None:
    identity = _identity(conn)
    for service_type, name, port_name, path in CATALOG:
        found = list(identity.services(type=service_type))
        service = found[0] if found else identity.create_service(name=name, type=service_type)
        url = layout.url(port_name) + path
        existing: Mapping[str, Any] = {
            e.interface: e for e in identity.endpoints(service_id=service.id)
        }
        for interface in ("public", "internal", "admin"):
            endpoint = existing.get(interface)
            if endpoint is None:
                identity.create_endpoint(
                    service_id=service.id, interface=interface, url=url, region_id=REGION
                )
            elif endpoint.url != url:
                identity.update_endpoint(endpoint, url=url)


def service_project(conn: openstack.connection.Connection) -> Any:
    """The ``service`` project (Astara's user works in it)."""
    return _identity(conn).find_project(SERVICE_PROJECT, ignore_missing=False)
