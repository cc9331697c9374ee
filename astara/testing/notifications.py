"""Record Neutron's notifications from RabbitMQ, for tests that assert what Neutron announced."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import oslo_messaging
from oslo_config import cfg

from astara.testing.neutron_bed import RABBIT_URL


@dataclass(frozen=True)
class Notification:
    event_type: str
    payload: dict[str, Any]
    publisher_id: str


class _Endpoint:
    def __init__(self, sink: Callable[[Notification], None]) -> None:
        self._sink = sink

    def info(
        self, ctxt: dict[str, Any], publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self._sink(Notification(event_type, payload, publisher_id))


class NotificationRecorder:
    """Listens on exchange ``neutron``, topic ``notifications``, in a pool of its own.

    A pool of its own gives this recorder its own queue, so it steals nothing from other
    consumers (the orchestrator) of the same topic.
    """

    def __init__(self, transport_url: str = RABBIT_URL) -> None:
        self._conf = cfg.ConfigOpts()
        self._conf([], project="astara-test-recorder")
        self._transport = oslo_messaging.get_notification_transport(self._conf, url=transport_url)
        self._received: list[Notification] = []
        self._cond = threading.Condition()
        self._listener = oslo_messaging.get_notification_listener(
            self._transport,
            [oslo_messaging.Target(exchange="neutron", topic="notifications")],
            [_Endpoint(self._record)],
            executor="threading",
            pool=f"astara-test-{uuid.uuid4().hex[:8]}",
        )

    def _record(self, notification: Notification) -> None:
        with self._cond:
            self._received.append(notification)
            self._cond.notify_all()

    def start(self) -> NotificationRecorder:
        self._listener.start()
        return self

    def stop(self) -> None:
        self._listener.stop()
        self._listener.wait()
        self._transport.cleanup()

    def wait_for(
        self, predicate: Callable[[Notification], bool], timeout: float = 10.0
    ) -> Notification:
        """The first notification matching predicate, waiting up to timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for notification in self._received:
                    if predicate(notification):
                        return notification
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({n.event_type for n in self._received})
                    raise TimeoutError(f"no matching notification in {timeout} s; saw {seen}")
                self._cond.wait(remaining)
