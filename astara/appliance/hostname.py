"""The appliance's hostname (Subsystem "hostname"): the kernel's, set to the document's.

Only where the appliance has a UTS namespace of its own (a VM, started with --set-hostname): an
appliance in a network namespace on a shared host (the netns provider) must leave the host's
name alone.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from astara.appliance.subsystem import LinkMap
from astara.wire.document import ApplianceConfig

LOG = logging.getLogger(__name__)


class HostnameSubsystem:
    name = "hostname"

    def __init__(self, set_hostname: Callable[[str], None] = socket.sethostname) -> None:
        self._set_hostname = set_hostname

    def apply(
        self,
        desired: ApplianceConfig | None,
        previous: ApplianceConfig | None,
        links: LinkMap,
    ) -> None:
        # Removing the configuration keeps the name: a nameless host helps no one.
        if desired is None or (previous is not None and previous.hostname == desired.hostname):
            return
        try:
            self._set_hostname(desired.hostname)
        except OSError as exc:
            # A name is for people reading logs and prompts: not a reason to roll back routing.
            LOG.error("hostname %s not set: %s", desired.hostname, exc)
