"""The contract between the apply engine and each part of the data plane.

A subsystem owns one slice of the appliance's state (links and addresses, the packet filter,
DHCP/DNS, router advertisements, the metadata proxy). The engine calls them in order with the
desired document and the one applied before; ``desired=None`` means "remove everything this
subsystem owns". Every apply converges from whatever is there now, so applying the same
document twice changes nothing, and re-applying the previous document is the rollback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from astara.wire.document import ApplianceConfig

# MAC address (lower case) -> kernel interface name, resolved by the engine before each apply.
LinkMap = Mapping[str, str]


class ApplyStepError(RuntimeError):
    """A subsystem could not apply; ``step`` names it for the API's 500 answer."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


class Subsystem(Protocol):
    name: str

    def apply(
        self,
        desired: ApplianceConfig | None,
        previous: ApplianceConfig | None,
        links: LinkMap,
    ) -> None:
        """Make this slice match ``desired``; raise ApplyStepError when it cannot."""
        ...
