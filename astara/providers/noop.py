"""The no-op provider: instances are entries in a dict, nothing boots.

For unit tests of the orchestrator's decisions (as Octavia's no-op drivers are): it answers as a
provider does, records what it was asked, and can be told to fail the way a real cloud fails
(``fail_boot``: refused at once, as Nova's quota; ``fail_instance``: the server went to ERROR).
Registered as ``noop`` in ``astara.providers``.
"""

from __future__ import annotations

import builtins

from oslo_config import cfg

from astara.providers.base import (
    Instance,
    InstanceSpec,
    PortSpec,
    Provider,
    ProviderContext,
    ProviderError,
)


class NoopProvider(Provider):
    name = "noop"

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.deleted: builtins.list[str] = []
        self.boot_error: str | None = None

    @classmethod
    def from_config(cls, conf: cfg.ConfigOpts, context: ProviderContext) -> NoopProvider:
        return cls()

    def fail_boot(self, reason: str | None) -> None:
        """Refuse every boot from now on with ``reason`` (None: boot again)."""
        self.boot_error = reason

    def fail_instance(self, instance_id: str, fault: str) -> None:
        """The instance failed in the cloud, with ``fault`` as the cloud's reason."""
        failed = self.instances[instance_id].model_copy(update={"state": "failed", "fault": fault})
        self.instances[instance_id] = failed

    def boot(self, spec: InstanceSpec) -> Instance:
        if spec.instance_id in self.instances:
            return self.instances[spec.instance_id]
        if self.boot_error is not None:
            raise ProviderError(self.boot_error)
        booted = Instance(
            id=spec.instance_id,
            router_id=spec.router_id,
            provider=self.name,
            management_address=f"fd00::{len(self.instances) + len(self.deleted) + 2:x}",
            state="running",
            ports=spec.ports,
        )
        self.instances[booted.id] = booted
        return booted

    def plug(self, instance: Instance, port: PortSpec) -> Instance:
        ports = (*(p for p in instance.ports if p.port_id != port.port_id), port)
        self.instances[instance.id] = instance.model_copy(update={"ports": ports})
        return self.instances[instance.id]

    def unplug(self, instance: Instance, port_id: str) -> Instance:
        ports = tuple(p for p in instance.ports if p.port_id != port_id)
        self.instances[instance.id] = instance.model_copy(update={"ports": ports})
        return self.instances[instance.id]

    def delete(self, instance_id: str) -> None:
        if self.instances.pop(instance_id, None) is not None:
            self.deleted.append(instance_id)

    def list(self) -> builtins.list[Instance]:
        return builtins.list(self.instances.values())

    def get(self, instance_id: str) -> Instance | None:
        return self.instances.get(instance_id)
