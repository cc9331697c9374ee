"""How an appliance instance is born and dies: the interface every instance provider implements.

A provider turns an ``InstanceSpec`` (which router, which Neutron ports) into a running
appliance and reports what exists, so an orchestrator that restarts can adopt the instances it
finds instead of rebuilding them. Every operation is idempotent: booting an instance that
exists returns it, deleting one that is gone does nothing, so a state machine can simply run
a step again after a crash. Providers are found by name through the ``astara.providers``
entry points (netns now, Nova later).
"""

from __future__ import annotations

import abc
import builtins
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from stevedore import driver

from astara.wire.document import Identifier, MacAddress, NetworkKind

ENTRY_POINT_NAMESPACE = "astara.providers"

InstanceState = Literal["running", "stopped", "missing"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortSpec(_Frozen):
    """One NIC of an instance: a Neutron port on a Neutron network."""

    port_id: Identifier
    network_id: Identifier
    mac: MacAddress
    kind: NetworkKind
    mtu: int = Field(1500, ge=1280, le=9216)


class InstanceSpec(_Frozen):
    """What to boot for a router. ``image`` and ``flavor`` (overrides of the configured ones)
    matter to image-based providers (Nova) only."""

    instance_id: Identifier
    router_id: Identifier
    ports: tuple[PortSpec, ...]
    image: str | None = None
    flavor: str | None = None

    def management_port(self) -> PortSpec:
        found = [port for port in self.ports if port.kind == "management"]
        if len(found) != 1:
            raise ValueError("an instance needs exactly one management port")
        return found[0]


class Instance(_Frozen):
    """An instance as the provider observes it now.

    ``management_address`` is the IP (no prefix length) the orchestrator reaches the
    appliance's API on; ``state`` is ``missing`` when the provider still has the instance's
    record but the instance itself is gone.
    """

    id: str
    router_id: str
    provider: str
    management_address: str
    state: InstanceState
    ports: tuple[PortSpec, ...]


class ProviderError(RuntimeError):
    """A provider could not do what was asked; the message says which step failed."""


class Provider(abc.ABC):
    """Boots, re-plugs, lists and deletes appliance instances."""

    name: str

    @abc.abstractmethod
    def boot(self, spec: InstanceSpec) -> Instance:
        """Create the instance (or finish creating it) and start its appliance."""

    @abc.abstractmethod
    def plug(self, instance: Instance, port: PortSpec) -> Instance:
        """Attach one more port; attaching a port already there changes nothing."""

    @abc.abstractmethod
    def unplug(self, instance: Instance, port_id: str) -> Instance:
        """Detach a port; detaching a port that is not there changes nothing."""

    @abc.abstractmethod
    def delete(self, instance_id: str) -> None:
        """Remove the instance and everything it used; a missing instance is a no-op."""

    @abc.abstractmethod
    def list(self) -> builtins.list[Instance]:
        """Every instance this provider knows of, with its observed state."""

    @abc.abstractmethod
    def get(self, instance_id: str) -> Instance | None:
        """One instance, or None when the provider knows nothing of it."""


def load_provider(name: str, **kwargs: Any) -> Provider:
    """The provider registered under ``name`` in the ``astara.providers`` entry points."""
    manager: driver.DriverManager = driver.DriverManager(
        namespace=ENTRY_POINT_NAMESPACE,
        name=name,
        invoke_on_load=True,
        invoke_kwds=kwargs,
    )
    provider = manager.driver
    if not isinstance(provider, Provider):
        raise TypeError(f"provider {name!r} does not implement astara.providers.base.Provider")
    return provider
