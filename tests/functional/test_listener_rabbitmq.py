"""The notification listener on the real RabbitMQ: every notification arrives as an event,
handled by the few threads configured (not oslo.messaging's 64, which wake every second)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from astara.orchestrator.events import Event, EventAction
from astara.orchestrator.listener import NotificationListener
from astara.testing.neutron_bed import RABBIT_URL

pytestmark = pytest.mark.functional


def test_every_notification_becomes_an_event_on_two_threads() -> None:
    conf = cfg.ConfigOpts()
    conf([], project="astara-test")
    topic = f"astara-test-{uuid.uuid4().hex[:8]}"
    events: list[Event] = []
    lock = threading.Lock()

    def sink(batch: list[Event]) -> None:
        with lock:
            events.extend(batch)

    listener = NotificationListener(
        conf,
        RABBIT_URL,
        sink,
        pool="astara-test",
        targets=[oslo_messaging.Target(exchange="neutron", topic=topic)],
        threads=2,
    )
    conf.set_override("control_exchange", "neutron")  # the notifier publishes as Neutron does
    before = set(threading.enumerate())
    listener.start()
    transport = oslo_messaging.get_notification_transport(conf, url=RABBIT_URL)
    notifier = oslo_messaging.Notifier(
        transport,
        publisher_id="network.test",
        driver="messagingv2",
        topics=[topic],
    )
    routers = [str(uuid.uuid4()) for _ in range(40)]
    try:
        time.sleep(1)  # the pool's queue is declared when the listener starts consuming
        for router_id in routers:
            notifier.info({}, "router.update.end", {"router": {"id": router_id}})
        deadline = time.monotonic() + 20
        while len(events) < len(routers):
            assert time.monotonic() < deadline, f"only {len(events)} of {len(routers)} arrived"
            time.sleep(0.05)
        assert {e.resource_id for e in events} == set(routers)
        assert {e.action for e in events} == {EventAction.UPDATE}
        workers = [t for t in set(threading.enumerate()) - before if "ThreadWorker" in repr(t)]
        assert 1 <= len(workers) <= 2
    finally:
        listener.stop()
        transport.cleanup()
        # The pool's queue, and the one the notifier declared for its topic: test leftovers.
        for queue in ("astara-test", f"{topic}.info"):
            subprocess.run(["rabbitmqctl", "delete_queue", queue], capture_output=True)
