"""Hears Neutron: notifications on RabbitMQ become internal events.

The listener consumes exchange ``neutron``, topic ``notifications`` in a pool of its own (its
own queue: it steals nothing from Ceilometer or other consumers), and, when Astara's Neutron
plugin is loaded, the plugin's own topic, which then replaces the router notifications.
oslo.messaging reconnects by itself after a broker outage, but whatever Neutron announced
meanwhile is lost, so a BrokerWatch notices the broker coming back and asks for a resync.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import oslo_messaging
from oslo_config import cfg

from astara.orchestrator.events import PLUGIN_COVERED, Event, from_notification, from_plugin_event

LOG = logging.getLogger(__name__)

EventSink = Callable[[list[Event]], None]


class _NotificationEndpoint:
    def __init__(self, sink: EventSink, plugin_events: bool) -> None:
        self._sink = sink
        self._skip = PLUGIN_COVERED if plugin_events else frozenset()

    def info(
        self,
        ctxt: Mapping[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Mapping[str, Any],
        metadata: Mapping[str, Any],
    ) -> None:
        if event_type in self._skip:
            LOG.debug("%s comes from Astara's Neutron plugin too; ignoring it here", event_type)
            return
        if event_type.startswith("astara."):
            events = from_plugin_event(event_type, payload)
        else:
            events = from_notification(event_type, payload)
        if not events:
            LOG.debug("ignoring notification %s from %s", event_type, publisher_id)
            return
        for event in events:
            LOG.info(
                "%s %s: %s (%s)",
                event.resource_type,
                event.resource_id,
                event.action,
                event_type,
            )
        self._sink(events)


class NotificationListener:
    def __init__(
        self,
        conf: cfg.ConfigOpts,
        transport_url: str | None,
        sink: EventSink,
        pool: str,
        targets: list[oslo_messaging.Target],
        plugin_events: bool = False,
        threads: int = 1,
    ) -> None:
        self._threads = threads
        self._transport = oslo_messaging.get_notification_transport(conf, url=transport_url)
        self._listener = oslo_messaging.get_notification_listener(
            self._transport,
            targets,
            [_NotificationEndpoint(sink, plugin_events)],
            executor="threading",
            pool=pool,
        )

    def start(self) -> None:
        self._listener.start(override_pool_size=self._threads)

    def stop(self) -> None:
        self._listener.stop()
        self._listener.wait()
        self._transport.cleanup()


class BrokerWatch:
    """Calls ``on_return`` once the broker answers again after an outage."""

    def __init__(
        self,
        host: str,
        port: int,
        on_return: Callable[[], None],
        interval: float = 2.0,
        settle: float = 5.0,
    ) -> None:
        self._address = (host, port)
        self._on_return = on_return
        self._interval = interval
        self._settle = settle  # let oslo.messaging reconnect first, so the resync misses nothing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)

    @classmethod
    def for_url(
        cls, conf: cfg.ConfigOpts, transport_url: str, on_return: Callable[[], None]
    ) -> BrokerWatch:
        host = oslo_messaging.TransportURL.parse(conf, transport_url).hosts[0]
        return cls(host.hostname, int(host.port or 5672), on_return)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(self._address, timeout=1.0):
                return True
        except OSError:
            return False

    def _run(self) -> None:
        was_up = True
        while not self._stop.wait(self._interval):
            up = self._answers()
            if up and not was_up:
                LOG.warning(
                    "broker %s:%s is back; resyncing after %.0f s", *self._address, self._settle
                )
                if self._stop.wait(self._settle):
                    return
                self._on_return()
            elif not up and was_up:
                LOG.warning("broker %s:%s does not answer", *self._address)
            was_up = up
