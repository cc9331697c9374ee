"""Sends router events to the orchestrator over oslo.messaging (runs inside neutron-server)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_context.context import RequestContext

from astara.neutron.protocol import PUBLISHER, TOPIC, RouterEvent


class EventForwarder:
    """A notifier of its own on Astara's topic.

    The driver is fixed to ``messagingv2`` so that turning Neutron's own notifications off
    (``[oslo_messaging_notifications] driver = noop``) does not silence Astara's events. The
    transport is neutron-server's notification transport (same broker, same TLS options); it
    is looked up on first use because it does not exist yet when the driver is constructed.
    """

    def __init__(self, conf: cfg.ConfigOpts, transport: Any = None) -> None:
        self._conf = conf
        self._transport = transport
        self._notifier: oslo_messaging.Notifier | None = None
        self._lock = threading.Lock()

    def _get_notifier(self) -> oslo_messaging.Notifier:
        with self._lock:
            if self._notifier is None:
                transport = self._transport or _neutron_notification_transport(self._conf)
                self._notifier = oslo_messaging.Notifier(
                    transport,
                    publisher_id=f"{PUBLISHER}.{self._conf.host or socket.gethostname()}",
                    driver="messagingv2",
                    topics=[TOPIC],
                )
            return self._notifier

    def send(self, context: Mapping[str, Any], event: RouterEvent) -> None:
        """``context``: the caller's request context as a dict; only its ids are sent.

        As a new RequestContext: oslo.messaging drops a plain dict (newer releases) or sends it
        whole, the caller's token included (older ones); a context object of the ids alone is
        sent, redacted, by every release.
        """
        trace = RequestContext(
            request_id=context.get("request_id"),
            global_request_id=context.get("global_request_id"),
            user_id=context.get("user_id"),
            project_id=context.get("project_id"),
        )
        self._get_notifier().info(trace, event.event_type, event.to_payload())


def _neutron_notification_transport(conf: cfg.ConfigOpts) -> Any:
    # Imported here so the module also loads in Astara's venv (its unit tests), without neutron.
    from neutron_lib import rpc

    if rpc.NOTIFICATION_TRANSPORT is not None:
        return rpc.NOTIFICATION_TRANSPORT
    return oslo_messaging.get_notification_transport(conf)
