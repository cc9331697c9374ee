"""The management API as an openstacksdk service (type ``astara``): resources and a proxy.

``connect(conn)`` adds the service to an openstacksdk Connection; its endpoint comes from the
Keystone catalog (service type ``astara``) or from ``astara_endpoint_override`` in
clouds.yaml, and the API's version document picks v1.
"""

from __future__ import annotations

from typing import Any

from openstack import connection, exceptions, proxy, resource, service_description, utils

SERVICE_TYPE = "astara"


class Router(resource.Resource):
    resources_key = "routers"
    base_path = "/routers"
    allow_list = True
    allow_fetch = True
    _query_mapping = resource.QueryParameters("project_id", "state", "failing")

    project_id = resource.Body("project_id")
    state = resource.Body("state")
    managed = resource.Body("managed", type=bool)
    debug = resource.Body("debug", type=bool)
    desired_generation = resource.Body("desired_generation", type=int)
    acknowledged_generation = resource.Body("acknowledged_generation", type=int)
    error_count = resource.Body("error_count", type=int)
    last_error = resource.Body("last_error")
    instance_id = resource.Body("instance_id")
    health = resource.Body("health")
    image = resource.Body("image")
    flavor = resource.Body("flavor")
    updated_at = resource.Body("updated_at")
    # show only
    instances = resource.Body("instances", type=list)
    worker = resource.Body("worker", type=dict)
    events = resource.Body("events", type=list)


class Instance(resource.Resource):
    resources_key = "instances"
    base_path = "/instances"
    allow_list = True
    _query_mapping = resource.QueryParameters("router_id")

    router_id = resource.Body("router_id")
    provider = resource.Body("provider")
    management_address = resource.Body("management_address")
    acknowledged_generation = resource.Body("acknowledged_generation", type=int)
    ever_reachable = resource.Body("ever_reachable", type=bool)
    health = resource.Body("health")
    last_heartbeat_at = resource.Body("last_heartbeat_at")
    reported_generation = resource.Body("reported_generation", type=int)
    drifted = resource.Body("drifted", type=bool)
    created_at = resource.Body("created_at")


class Worker(resource.Resource):
    resources_key = "workers"
    base_path = "/workers"
    allow_list = True

    id = resource.Body("index", alternate_id=True, type=int)
    pid = resource.Body("pid", type=int)
    alive = resource.Body("alive", type=bool)
    queue_events = resource.Body("queue_events", type=int)
    inbox_events = resource.Body("inbox_events", type=int)
    routers = resource.Body("routers", type=int)
    ready_routers = resource.Body("ready_routers", type=int)
    scheduled = resource.Body("scheduled", type=int)
    threads = resource.Body("threads", type=list)
    reported_at = resource.Body("reported_at")


class Event(resource.Resource):
    resources_key = "events"
    base_path = "/events"
    allow_list = True
    _query_mapping = resource.QueryParameters("router_id", "limit")

    time = resource.Body("time")
    router_id = resource.Body("router_id")
    instance_id = resource.Body("instance_id")
    message = resource.Body("message")
    actor = resource.Body("actor")


class Proxy(proxy.Proxy):
    """``conn.astara``: the management API's v1 (its lists come whole, in one page)."""

    def routers(self, **query: Any) -> Any:
        return self._list(Router, paginated=False, **query)

    def get_router(self, router_id: str) -> Router:
        return self._get(Router, router_id)

    def instances(self, **query: Any) -> Any:
        return self._list(Instance, paginated=False, **query)

    def workers(self) -> Any:
        return self._list(Worker, paginated=False)

    def events(self, **query: Any) -> Any:
        return self._list(Event, paginated=False, **query)

    def rebuild_router(self, router_id: str, **overrides: str | None) -> dict[str, Any]:
        """``image`` and ``flavor`` overrides; None goes back to the configured one."""
        return self._call("POST", f"routers/{router_id}/rebuild", overrides or None)

    def poll_router(self, router_id: str) -> dict[str, Any]:
        return self._call("POST", f"routers/{router_id}/poll")

    def manage_router(self, router_id: str, managed: bool = True) -> dict[str, Any]:
        return self._call("POST", f"routers/{router_id}/{'manage' if managed else 'unmanage'}")

    def debug_router(self, router_id: str, enabled: bool = True) -> dict[str, Any]:
        return self._call("POST", f"routers/{router_id}/debug", {"enabled": enabled})

    def get_project(self, project_id: str) -> dict[str, Any]:
        return self._call("GET", f"projects/{project_id}")

    def debug_project(self, project_id: str, enabled: bool = True) -> dict[str, Any]:
        return self._call("POST", f"projects/{project_id}/debug", {"enabled": enabled})

    def get_breaker(self) -> dict[str, Any]:
        return self._call("GET", "breaker")

    def reset_breaker(self) -> dict[str, Any]:
        return self._call("POST", "breaker/reset")

    def reload_config(self) -> dict[str, Any]:
        return self._call("POST", "config/reload")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call beside the resources (actions, singletons); an error raises with the
        API's message."""
        response = self.request(utils.urljoin(path), method, json=body)
        exceptions.raise_from_response(response)
        answer: dict[str, Any] = response.json()
        return answer


def connect(conn: connection.Connection) -> Proxy:
    """The ``astara`` proxy of an openstacksdk Connection (added on first use)."""
    if SERVICE_TYPE not in conn._proxies:
        conn.add_service(
            service_description.ServiceDescription(SERVICE_TYPE, supported_versions={"1": Proxy})
        )
    found: Proxy = getattr(conn, SERVICE_TYPE)
    return found
