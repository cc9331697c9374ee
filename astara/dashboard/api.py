"""The management API, as the panels call it: the user's token, the catalog's endpoint."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from horizon.exceptions import ServiceCatalogException
from keystoneauth1 import session as ks_session
from openstack_dashboard.api import base

SERVICE_TYPE = "astara"


class ApiError(Exception):
    """The API refused or failed; the message is its reason."""


def endpoint(request: Any) -> str:
    """``ASTARA_API_URL`` in Horizon's settings, else the catalog's ``astara`` service."""
    configured = getattr(settings, "ASTARA_API_URL", None)
    if configured:
        return str(configured).rstrip("/")
    try:
        return str(base.url_for(request, SERVICE_TYPE)).rstrip("/")
    except ServiceCatalogException as exc:
        raise ApiError(
            f"no '{SERVICE_TYPE}' service in the Keystone catalog: register the "
            "orchestrator's management API there (or set ASTARA_API_URL)"
        ) from exc


def _call(request: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    verify = not getattr(settings, "OPENSTACK_SSL_NO_VERIFY", False)
    session = ks_session.Session(verify=getattr(settings, "OPENSTACK_SSL_CACERT", None) or verify)
    response = session.request(
        f"{endpoint(request)}/v1/{path}",
        method,
        headers={"X-Auth-Token": request.user.token.id},
        json=body,
        raise_exc=False,
        timeout=20,
    )
    if response.status_code >= 400:
        try:
            reason = response.json().get("message")
        except ValueError:
            reason = None
        raise ApiError(reason or f"HTTP {response.status_code}")
    return response.json()


class Router:
    """A router as the tables show it (the API's fields as attributes)."""

    id: str
    managed: bool
    debug: bool

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)
        self.generation = (
            f"{fields.get('acknowledged_generation')} / {fields['desired_generation']}"
        )


def routers(request: Any, project_id: str | None = None) -> list[Router]:
    query = f"?project_id={project_id}" if project_id else ""
    return [Router(r) for r in _call(request, "GET", f"routers{query}")["routers"]]


def router(request: Any, router_id: str) -> Router:
    return Router(_call(request, "GET", f"routers/{router_id}"))


def rebuild(request: Any, router_id: str, image: str | None, keep_image: bool) -> None:
    """``keep_image``: the router's current image stays; else ``image`` (None: configured)."""
    body = {} if keep_image else {"image": image}
    _call(request, "POST", f"routers/{router_id}/rebuild", body)


def poll(request: Any, router_id: str) -> None:
    _call(request, "POST", f"routers/{router_id}/poll")


def manage(request: Any, router_id: str, managed: bool) -> None:
    _call(request, "POST", f"routers/{router_id}/{'manage' if managed else 'unmanage'}")


def debug(request: Any, router_id: str, enabled: bool) -> None:
    _call(request, "POST", f"routers/{router_id}/debug", {"enabled": enabled})
