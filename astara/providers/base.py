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
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from oslo_config import cfg
from pydantic import BaseModel, ConfigDict, Field
from stevedore import driver

from astara.common.tls import CertificateAuthority
from astara.wire.defaults import API_PORT
from astara.wire.document import DEFAULT_MTU, MAX_MTU, MIN_MTU, Identifier, MacAddress, NetworkKind
from astara.wire.heartbeat import DEFAULT_INTERVAL

ENTRY_POINT_NAMESPACE = "astara.providers"

# "failed": the provider gave up on it (a Nova server in ERROR); ``Instance.fault`` says why.
InstanceState = Literal["running", "stopped", "missing", "failed"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortSpec(_Frozen):
    """One NIC of an instance: a Neutron port on a Neutron network."""

    port_id: Identifier
    network_id: Identifier
    mac: MacAddress
    kind: NetworkKind
    mtu: int = Field(DEFAULT_MTU, ge=MIN_MTU, le=MAX_MTU)


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
    appliance's API on, in a subnet of ``management_prefixlen`` bits (None: the orchestrator's
    configured management subnet); ``state`` is ``missing`` when the provider still has the
    instance's record but the instance itself is gone. ``ports`` carry the MAC of the NIC that
    serves each Neutron port, which is the port's own MAC unless the provider wires the port
    through a NIC of its own (Nova's service ports).
    """

    id: str
    router_id: str
    provider: str
    management_address: str
    state: InstanceState
    ports: tuple[PortSpec, ...]
    management_prefixlen: int | None = None
    fault: str | None = None


class ProviderError(RuntimeError):
    """A provider could not do what was asked; the message says which step failed."""


@dataclass(frozen=True)
class ProviderContext:
    """What the orchestrator gives every provider, whatever boots its instances: the CA that
    signs appliance certificates, the appliance API port, and where and how to heartbeat."""

    ca: CertificateAuthority
    api_port: int = API_PORT
    heartbeat_target: tuple[str, int] | None = None
    heartbeat_key: Callable[[str], bytes] | None = None
    heartbeat_interval: float = DEFAULT_INTERVAL


class Provider(abc.ABC):
    """Boots, re-plugs, lists and deletes appliance instances."""

    name: str

    @classmethod
    @abc.abstractmethod
    def from_config(cls, conf: cfg.ConfigOpts, context: ProviderContext) -> Provider:
        """The provider as the orchestrator's configuration describes it."""

    def allocate_id(
        self, router_id: str, image: str | None = None, flavor: str | None = None
    ) -> str:
        """The id of the next instance of ``router_id`` (a provider with pre-booted instances
        of the configured image and flavor hands one of those out)."""
        return str(uuid.uuid4())

    def check(self) -> None:
        """What the provider needs from the cloud, checked before the orchestrator starts;
        raises ProviderError saying what to change (nothing to check by default)."""
        return

    def maintain(self, known_instances: Collection[str] = ()) -> None:
        """Background upkeep, run periodically by one process; ``known_instances``: the ids of
        every instance a router owns (nothing to do by default)."""
        return

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


def provider_from_config(conf: cfg.ConfigOpts, context: ProviderContext) -> Provider:
    """The provider ``[provider] name`` names, configured from ``conf``."""
    manager: driver.DriverManager = driver.DriverManager(
        namespace=ENTRY_POINT_NAMESPACE, name=conf.provider.name, invoke_on_load=False
    )
    provider_class = manager.driver
    if not (isinstance(provider_class, type) and issubclass(provider_class, Provider)):
        raise TypeError(f"provider {conf.provider.name!r} is not a Provider class")
    return provider_class.from_config(conf, context)


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
