"""Astara's Neutron plugin, loaded into the real neutron-server of the test bed.

Two beds of their own (the suite's default bed stays as it is), both taking the caller's
identity from trusted test headers so that policy is enforced for real:
- ``default_bed``: Astara is the default L3 provider, Neutron's notifications on;
- ``flavor_bed``: single_node stays the default, Astara only through a router flavor, and
  Neutron's notifications are off (driver noop).
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import oslo_messaging
import pytest
from oslo_config import cfg

from astara.neutron.protocol import EXCHANGE, TOPIC, RouterEvent
from astara.testing import services
from astara.testing.neutron_bed import (
    RABBIT_URL,
    Endpoint,
    NeutronTestbed,
    ensure_venv,
    trusted_identity,
)
from astara.testing.notifications import NotificationRecorder

pytestmark = pytest.mark.e2e

DRIVER = "astara.neutron.l3_driver.AstaraL3Driver"


def _bed(name: str, **options: Any) -> Iterator[Endpoint]:
    services.ensure_all()
    bed = NeutronTestbed(
        state_dir=Path(f"/var/lib/astara/testbed-{name}"),
        database=f"astara_neutron_{name.replace('-', '_')}",
        astara_plugin=True,
        trusted_headers=True,
        **options,
    )
    endpoint = bed.up()
    yield endpoint
    bed.down()


@pytest.fixture(scope="module")
def default_bed() -> Iterator[Endpoint]:
    yield from _bed("plugin")


@pytest.fixture(scope="module")
def flavor_bed() -> Iterator[Endpoint]:
    yield from _bed(
        "plugin-flavor",
        astara_default=False,
        extra_config={"oslo_messaging_notifications": {"driver": "noop"}},
    )


class Api:
    """The Neutron API as one identity (trusted test headers)."""

    def __init__(
        self, endpoint: Endpoint, project_id: str, roles: str = "admin", token: str = ""
    ) -> None:
        self.project_id = project_id
        headers = trusted_identity(f"user-{roles}", project_id, roles)
        if token:  # keystonecontext puts it in the request context, as Keystone's would be
            headers["X-Auth-Token"] = token
        self._http = httpx.Client(base_url=endpoint.url + "/v2.0", headers=headers, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self._http.request(method, path, json=body)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        response = self.call(method, path, body)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def create(self, collection: str, **attrs: Any) -> dict[str, Any]:
        member = collection[:-1]
        created: dict[str, Any] = self.ok("POST", f"/{collection}", {member: attrs})[member]
        return created


class EventListener:
    """Listens on Astara's topic the way the orchestrator does, in a pool of its own."""

    def __init__(self) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="astara-test-plugin-events")
        self._transport = oslo_messaging.get_notification_transport(conf, url=RABBIT_URL)
        self._events: list[RouterEvent] = []
        self.contexts: dict[str, Any] = {}  # event_type + resource id -> the message's context
        self._cond = threading.Condition()
        self._listener = oslo_messaging.get_notification_listener(
            self._transport,
            [oslo_messaging.Target(exchange=EXCHANGE, topic=TOPIC)],
            [self],
            executor="threading",
            pool=f"astara-test-{uuid.uuid4().hex[:8]}",
        )
        self._listener.start()

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        event = RouterEvent.from_notification(event_type, payload)
        with self._cond:
            self.contexts[event.event_type + event.resource_id] = ctxt
            self._events.append(event)
            self._cond.notify_all()

    def stop(self) -> None:
        self._listener.stop()
        self._listener.wait()
        self._transport.cleanup()

    def of(self, router_id: str) -> list[RouterEvent]:
        with self._cond:
            return [e for e in self._events if e.router_id == router_id]

    def wait_for(
        self, router_id: str, event_type: str, resource_id: str = "", timeout: float = 10
    ) -> RouterEvent:
        def match(e: RouterEvent) -> bool:
            return e.event_type == event_type and resource_id in ("", e.resource_id)

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self._events if e.router_id == router_id and match(e)]
                if found:
                    return found[0]
                if time.monotonic() > deadline:
                    seen = [e.event_type for e in self._events if e.router_id == router_id]
                    raise TimeoutError(f"no {event_type} for router {router_id}; saw {seen}")
                self._cond.wait(0.2)


@pytest.fixture
def events() -> Iterator[EventListener]:
    listener = EventListener()
    yield listener
    listener.stop()


def _network(api: Api, cidr: str) -> tuple[dict[str, Any], dict[str, Any]]:
    net = api.create("networks", name="tenant-" + cidr)
    subnet = api.create("subnets", network_id=net["id"], cidr=cidr, ip_version=4)
    return net, subnet


def _astara_flavor(api: Api) -> dict[str, Any]:
    """A router flavor whose service profile is Astara's provider driver."""
    profile = api.ok("POST", "/service_profiles", {"service_profile": {"driver": DRIVER}})
    flavor: dict[str, Any] = api.ok(
        "POST",
        "/flavors",
        {"flavor": {"name": "astara-" + api.project_id[:6], "service_type": "L3_ROUTER_NAT"}},
    )["flavor"]
    api.ok(
        "POST",
        f"/flavors/{flavor['id']}/service_profiles",
        {"service_profile": {"id": profile["service_profile"]["id"]}},
    )
    return flavor


def _external_network(api: Api) -> dict[str, Any]:
    physnet = "public-" + api.project_id[:6]
    public = api.create(
        "networks",
        name=physnet,
        **{
            "router:external": True,
            "provider:network_type": "flat",
            "provider:physical_network": physnet,
        },
    )
    api.create("subnets", network_id=public["id"], cidr="172.24.4.0/24", ip_version=4)
    return public


def _refuses_scheduling(api: Api, router_id: str) -> bool:
    """Ask Neutron to bind the router to an L3 agent; it checks the provider first."""
    response = api.call("POST", f"/agents/{uuid.uuid4()}/l3-routers", {"router_id": router_id})
    assert response.status_code in (404, 409), response.text
    return bool(response.status_code == 409 and "RouterDoesntSupportScheduling" in response.text)


def test_default_provider_router_events_reach_the_orchestrator_topic(
    default_bed: Endpoint, project_id: str, events: EventListener
) -> None:
    api = Api(default_bed, project_id)
    _, subnet = _network(api, "10.20.0.0/24")
    public = _external_network(api)
    router = api.create("routers", name="r1")
    rid = router["id"]
    assert router["flavor_id"] is None
    assert _refuses_scheduling(api, rid)
    assert api.ok("GET", f"/routers/{rid}/l3-agents")["agents"] == []

    created = events.wait_for(rid, "astara.router.create", rid)
    assert created.project_id == project_id

    iface = api.ok("PUT", f"/routers/{rid}/add_router_interface", {"subnet_id": subnet["id"]})
    events.wait_for(rid, "astara.router_interface.create", iface["port_id"])

    api.ok(
        "PUT",
        f"/routers/{rid}",
        {"router": {"external_gateway_info": {"network_id": public["id"]}}},
    )
    events.wait_for(rid, "astara.router_gateway.create", public["id"])
    events.wait_for(rid, "astara.router.update", rid)

    port = api.create("ports", network_id=subnet["network_id"])
    fip = api.create("floatingips", floating_network_id=public["id"], port_id=port["id"])
    assert fip["router_id"] == rid
    events.wait_for(rid, "astara.floatingip.create", fip["id"])
    api.ok("PUT", f"/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
    moved = events.wait_for(rid, "astara.floatingip.update", fip["id"])
    assert "disassociated" in moved.cause
    api.ok("DELETE", f"/floatingips/{fip['id']}")

    api.ok("PUT", f"/routers/{rid}/remove_router_interface", {"subnet_id": subnet["id"]})
    events.wait_for(rid, "astara.router_interface.delete", iface["port_id"])
    api.ok("DELETE", f"/routers/{rid}")
    events.wait_for(rid, "astara.router_gateway.delete", public["id"])
    deleted = events.wait_for(rid, "astara.router.delete", rid)
    assert deleted.project_id == project_id


def test_port_forwardings_are_forwarded_as_events_of_their_router(
    default_bed: Endpoint, project_id: str, events: EventListener
) -> None:
    api = Api(default_bed, project_id)
    _, subnet = _network(api, "10.21.0.0/24")
    public = _external_network(api)
    router = api.create("routers", name="r-pf", external_gateway_info={"network_id": public["id"]})
    rid = router["id"]
    api.ok("PUT", f"/routers/{rid}/add_router_interface", {"subnet_id": subnet["id"]})
    port = api.create("ports", network_id=subnet["network_id"])
    fip = api.create("floatingips", floating_network_id=public["id"])
    forwards = f"/floatingips/{fip['id']}/port_forwardings"
    rule = {
        "protocol": "tcp",
        "internal_port_id": port["id"],
        "internal_ip_address": port["fixed_ips"][0]["ip_address"],
        "internal_port": 22,
        "external_port": 2222,
    }
    pf = api.ok("POST", forwards, {"port_forwarding": rule})["port_forwarding"]
    created = events.wait_for(rid, "astara.port_forwarding.create", pf["id"])
    assert fip["id"] in created.cause
    api.ok("PUT", f"{forwards}/{pf['id']}", {"port_forwarding": {"external_port": 2223}})
    events.wait_for(rid, "astara.port_forwarding.update", pf["id"])
    api.ok("DELETE", f"{forwards}/{pf['id']}")
    events.wait_for(rid, "astara.port_forwarding.delete", pf["id"])


def test_flavor_router_is_astara_and_other_provider_is_left_alone(
    flavor_bed: Endpoint, project_id: str, events: EventListener
) -> None:
    api = Api(flavor_bed, project_id)
    _, subnet_a = _network(api, "10.30.0.0/24")
    _, subnet_b = _network(api, "10.31.0.0/24")

    plain = api.create("routers", name="single-node")
    assert not _refuses_scheduling(api, plain["id"])
    assert api.call("GET", f"/astara/router_statuses/{plain['id']}").status_code == 404
    api.ok("PUT", f"/routers/{plain['id']}/add_router_interface", {"subnet_id": subnet_a["id"]})

    flavor = _astara_flavor(api)
    astara = api.create("routers", name="astara", flavor_id=flavor["id"])
    assert astara["flavor_id"] == flavor["id"]
    assert _refuses_scheduling(api, astara["id"])
    api.ok("PUT", f"/routers/{astara['id']}/add_router_interface", {"subnet_id": subnet_b["id"]})

    events.wait_for(astara["id"], "astara.router.create")
    events.wait_for(astara["id"], "astara.router_interface.create")
    # One publisher, one queue: events arrive in order, so the plain router's would be here.
    assert events.of(plain["id"]) == []


def test_interface_is_forwarded_with_neutron_notifications_off(
    flavor_bed: Endpoint, project_id: str, events: EventListener
) -> None:
    recorder = NotificationRecorder().start()
    try:
        api = Api(flavor_bed, project_id)
        flavor = _astara_flavor(api)
        _, subnet = _network(api, "10.40.0.0/24")
        router = api.create("routers", name="astara", flavor_id=flavor["id"])
        iface = api.ok(
            "PUT", f"/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]}
        )
        events.wait_for(router["id"], "astara.router_interface.create", iface["port_id"])
        with pytest.raises(TimeoutError):
            recorder.wait_for(
                lambda n: (
                    n.event_type == "router.interface.create"
                    and n.payload["router_interface"]["id"] == router["id"]
                ),
                timeout=2,
            )
    finally:
        recorder.stop()


def test_status_written_through_the_api_shows_in_router_and_ports(
    default_bed: Endpoint, project_id: str
) -> None:
    api = Api(default_bed, project_id)
    _, subnet = _network(api, "10.50.0.0/24")
    public = _external_network(api)
    router = api.create("routers", name="r", external_gateway_info={"network_id": public["id"]})
    rid = router["id"]
    iface = api.ok("PUT", f"/routers/{rid}/add_router_interface", {"subnet_id": subnet["id"]})
    gw_port = api.ok("GET", f"/ports?device_id={rid}&device_owner=network:router_gateway")["ports"][
        0
    ]
    assert api.ok("GET", f"/ports/{iface['port_id']}")["port"]["status"] == "DOWN"

    shown = api.ok(
        "PUT",
        f"/astara/router_statuses/{rid}",
        {
            "router_status": {
                "status": "ERROR",
                "port_statuses": {iface["port_id"]: "ACTIVE", gw_port["id"]: "ACTIVE"},
            }
        },
    )["router_status"]
    assert shown["status"] == "ERROR"
    assert shown["port_statuses"] == {iface["port_id"]: "ACTIVE", gw_port["id"]: "ACTIVE"}
    assert api.ok("GET", f"/routers/{rid}")["router"]["status"] == "ERROR"
    assert api.ok("GET", f"/ports/{iface['port_id']}")["port"]["status"] == "ACTIVE"
    assert api.ok("GET", f"/ports/{gw_port['id']}")["port"]["status"] == "ACTIVE"

    api.ok(
        "PUT",
        f"/astara/router_statuses/{rid}",
        {"router_status": {"status": "ALLOCATING", "port_statuses": {gw_port["id"]: "DOWN"}}},
    )
    assert api.ok("GET", f"/routers/{rid}")["router"]["status"] == "ALLOCATING"
    assert api.ok("GET", f"/ports/{gw_port['id']}")["port"]["status"] == "DOWN"
    assert api.ok("GET", f"/astara/router_statuses/{rid}")["router_status"]["port_statuses"] == {
        iface["port_id"]: "ACTIVE",
        gw_port["id"]: "DOWN",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "BUILD"}, "status"),
        ({"port_statuses": {"x": "BUILD"}}, "port_statuses"),
        ({"port_statuses": ["ACTIVE"]}, "port_statuses"),
        ({"port_statuses": {"00000000-0000-0000-0000-000000000000": "DOWN"}}, "port_statuses"),
        ({"firewall_group_statuses": {"g": "INACTIVE"}}, "firewall_group_statuses"),
        (
            {"firewall_group_statuses": {"00000000-0000-0000-0000-000000000000": "ACTIVE"}},
            "firewall_group_statuses",
        ),
    ],
)
def test_invalid_status_is_refused_naming_the_field(
    default_bed: Endpoint, project_id: str, body: dict[str, Any], field: str
) -> None:
    api = Api(default_bed, project_id)
    rid = api.create("routers", name="r")["id"]
    response = api.call("PUT", f"/astara/router_statuses/{rid}", {"router_status": body})
    assert response.status_code == 400, response.text
    assert field in response.json()["NeutronError"]["message"]
    assert api.ok("GET", f"/routers/{rid}")["router"]["status"] == "ACTIVE"


def test_policy_refuses_callers_without_admin_or_service_role(
    default_bed: Endpoint, project_id: str
) -> None:
    admin = Api(default_bed, project_id)
    rid = admin.create("routers", name="r")["id"]
    path = f"/astara/router_statuses/{rid}"
    update = {"router_status": {"status": "ERROR"}}

    member = Api(default_bed, project_id, roles="member,reader")
    assert member.ok("GET", path)["router_status"]["status"] == "ACTIVE"
    refused = member.call("PUT", path, update)
    assert refused.status_code == 403, refused.text
    assert "update_router_status" in refused.text
    stranger = Api(default_bed, uuid.uuid4().hex, roles="member,reader")
    assert stranger.call("GET", path).status_code == 404
    assert stranger.call("PUT", path, update).status_code == 404
    assert admin.ok("GET", f"/routers/{rid}")["router"]["status"] == "ACTIVE"

    service = Api(default_bed, uuid.uuid4().hex, roles="service")
    assert service.ok("PUT", path, update)["router_status"]["status"] == "ERROR"


def test_policies_are_visible_to_the_sample_generator(default_bed: Endpoint) -> None:
    generator = ensure_venv() / "bin/oslopolicy-sample-generator"
    sample = subprocess.run(
        [str(generator), "--namespace", "astara"], capture_output=True, text=True, check=True
    ).stdout
    assert '"get_router_status"' in sample
    assert '"update_router_status": "rule:admin_only or role:service"' in sample


@pytest.mark.security
def test_events_carry_the_callers_ids_and_never_a_credential(
    default_bed: Endpoint, project_id: str, events: EventListener
) -> None:
    api = Api(default_bed, project_id, token="gAAAAA-the-callers-keystone-token")  # noqa: S106
    response = api.call("POST", "/routers", {"router": {"name": "traced"}})
    assert response.status_code == 201, response.text
    rid = response.json()["router"]["id"]
    events.wait_for(rid, "astara.router.create", rid)
    sent = events.contexts["astara.router.create" + rid]
    assert sent["request_id"] == response.headers["X-Openstack-Request-Id"]
    assert (sent["user"], sent["project_id"]) == ("user-admin", project_id)
    assert "gAAAAA" not in str(sent)
    assert not sent.get("roles") and not sent.get("is_admin")


@pytest.mark.security
def test_what_the_status_api_does_not_do_is_405_or_404_and_changes_nothing(
    default_bed: Endpoint, project_id: str
) -> None:
    api = Api(default_bed, project_id)
    rid = api.create("routers", name="r")["id"]
    collection = "/astara/router_statuses"
    answers = {
        "list": api.call("GET", collection),
        "create": api.call("POST", collection, {"router_status": {"status": "ERROR"}}),
        "create (empty)": api.call("POST", collection, {"router_status": {}}),
        "delete": api.call("DELETE", f"{collection}/{rid}"),
        "delete (unknown)": api.call("DELETE", f"{collection}/{uuid.uuid4()}"),
    }
    codes = {name: response.status_code for name, response in answers.items()}
    assert codes == {
        "list": 405,
        "create": 400,  # "Attribute 'status' not allowed in POST"
        "create (empty)": 405,
        "delete": 405,
        "delete (unknown)": 404,
    }, {name: response.text for name, response in answers.items()}
    assert "show and update only" in answers["delete"].text
    assert api.ok("GET", f"/routers/{rid}")["router"]["status"] == "ACTIVE"
    assert api.ok("GET", f"{collection}/{rid}")["router_status"]["status"] == "ACTIVE"
