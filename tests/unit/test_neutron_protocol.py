"""The wire format of Astara's plugin events, and the notifier that sends them."""

from __future__ import annotations

import threading
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

from astara.neutron.forwarder import EventForwarder
from astara.neutron.protocol import EVENT_TYPES, TOPIC, ProtocolError, RouterEvent

pytestmark = pytest.mark.unit


def _event(**changes: Any) -> RouterEvent:
    values = {
        "resource": "router_interface",
        "action": "create",
        "router_id": "r1",
        "project_id": "p1",
        "resource_id": "port1",
        "cause": "router_interface port1 create on router r1",
    }
    return RouterEvent(**(values | changes))


def test_event_round_trips_through_its_payload() -> None:
    event = _event()
    assert event.event_type == "astara.router_interface.create"
    assert RouterEvent.from_notification(event.event_type, event.to_payload()) == event


def test_event_types_cover_every_forwarded_change() -> None:
    assert {
        "astara.router.create",
        "astara.router.update",
        "astara.router.delete",
        "astara.router_interface.create",
        "astara.router_interface.delete",
        "astara.router_gateway.create",
        "astara.router_gateway.delete",
        "astara.floatingip.create",
        "astara.floatingip.update",
        "astara.floatingip.delete",
        "astara.port_forwarding.create",
        "astara.port_forwarding.update",
        "astara.port_forwarding.delete",
        "astara.firewall_group.create",
        "astara.firewall_group.update",
        "astara.firewall_group.delete",
    } == EVENT_TYPES


@pytest.mark.parametrize(
    "changes",
    [
        {"resource": "network"},
        {"action": "change"},
        {"resource": "router_gateway", "action": "update"},
    ],
)
def test_unknown_event_types_are_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ProtocolError, match="unknown event type"):
        _event(**changes)


def test_event_needs_a_router() -> None:
    with pytest.raises(ProtocolError, match="router_id"):
        _event(router_id="")


@pytest.mark.parametrize(
    ("event_type", "payload", "message"),
    [
        ("astara.router.create", ["not", "an", "object"], "not an object"),
        ("astara.router_interface.create", {"version": 2}, "unsupported version"),
        ("astara.router_interface.create", {"version": 1, "router_id": 7}, "router_id"),
        ("astara.router.delete", _event().to_payload(), "does not match"),
    ],
)
def test_malformed_notifications_are_refused(event_type: str, payload: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        RouterEvent.from_notification(event_type, payload)


class _Collector:
    def __init__(self) -> None:
        self.received: list[tuple[str, str, Any]] = []
        self.arrived = threading.Event()

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> None:
        self.received.append((publisher_id, event_type, payload))
        self.arrived.set()


def test_forwarder_publishes_on_astaras_topic_whatever_neutrons_driver() -> None:
    conf = cfg.ConfigOpts()
    conf([], project="astara-unit")
    conf.register_opts([cfg.StrOpt("host", default="node1")])
    transport = oslo_messaging.get_notification_transport(conf, url="fake:/")
    # Neutron's own notifications off must not silence Astara's.
    conf.set_override("driver", ["noop"], group="oslo_messaging_notifications")
    collector = _Collector()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=TOPIC)], [collector], executor="threading"
    )
    listener.start()
    try:
        event = _event()
        EventForwarder(conf, transport=transport).send({}, event)
        assert collector.arrived.wait(5)
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()
    assert collector.received == [("astara-neutron.node1", event.event_type, event.to_payload())]
