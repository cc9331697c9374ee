"""The Nova provider: each appliance is a Nova server booted from Astara's appliance image.

How a router's addresses reach the server: the router's own interface and gateway ports stay
as Neutron made them (owned by the router, holding its addresses), so Neutron's view of the
router stays true. For each, the provider makes a **service port** on the same network, with
no fixed IP and port security off (the appliance answers for the router's addresses and
forwards tenants' packets, which port security would drop), and attaches it to the server.
Its MAC is derived from the router port's id, so a replacement's NIC has the same MAC and
tenants' ARP caches stay right. The appliance finds each NIC by that MAC (the instance's
ports report it) and takes the router port's addresses on it.

Every server and port carries Neutron/Nova **tags** naming the instance and the router; an
orchestrator that restarts finds its servers by tag, never by name. The management port (on
``[management] network_id``) gets a fixed address; the appliance learns it, its certificate,
key and heartbeat key from the **config drive** (the user data is a ``Bootstrap`` document),
never from a network.

The **warm pool**: ``[nova] pool_size`` servers booted with a management port only, tagged
with the image and flavor they run; ``allocate_id`` hands one out (under a lock shared by every
orchestrator) and ``maintain`` refills the pool, drains servers of an old image or flavor, and
removes servers and ports no router owns.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import ipaddress
import logging
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

from oslo_config import cfg
from tooz import coordination

from astara.providers.base import (
    Instance,
    InstanceSpec,
    InstanceState,
    PortSpec,
    Provider,
    ProviderContext,
    ProviderError,
)
from astara.providers.nova_cloud import NovaCloud, PortInfo, SdkCloud, ServerInfo
from astara.wire.bootstrap import Bootstrap, HeartbeatTarget, ManagementLink
from astara.wire.document import NetworkKind

LOG = logging.getLogger(__name__)

TAG = "astara"
POOL_TAG = "astara-pool"
INSTANCE_TAG = "astara-instance:"
ROUTER_TAG = "astara-router:"
PORT_TAG = "astara-port:"  # a service port: the router port it serves
KIND_TAG = "astara-kind:"
IMAGE_TAG = "astara-image:"
FLAVOR_TAG = "astara-flavor:"
IP_ALLOCATION_EXTENSION = "ip_allocation"

RUNNING = {"ACTIVE", "BUILD", "REBUILD", "REBOOT", "HARD_REBOOT", "MIGRATING", "RESIZE"}
GONE = {"DELETED", "SOFT_DELETED"}


@dataclass(frozen=True)
class NovaSettings:
    """The ``[nova]`` and ``[management]`` options the provider uses."""

    management_network_id: str
    management_subnet_id: str | None = None
    image: str | None = None
    image_tag: str = "astara-appliance"
    flavor: str = "astara.appliance"
    availability_zone: str | None = None
    server_group: str | None = None
    pool_size: int = 0


def service_mac(router_port_id: str) -> str:
    """The MAC of the service port serving a router port: stable across replacements,
    locally administered and unicast."""
    digest = hashlib.sha256(f"service:{router_port_id}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _tagged(tags: Collection[str], prefix: str) -> str | None:
    return next((tag[len(prefix) :] for tag in tags if tag.startswith(prefix)), None)


def _state(server: ServerInfo | None) -> InstanceState:
    if server is None or server.status in GONE:
        return "missing"
    if server.status == "ERROR":
        return "failed"
    return "running" if server.status in RUNNING else "stopped"


class NovaProvider(Provider):
    name = "nova"

    def __init__(
        self,
        cloud: NovaCloud,
        settings: NovaSettings,
        context: ProviderContext,
        lock: Callable[[], ContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        """``lock``: held while a pooled server is handed out (shared by every orchestrator)."""
        self._cloud = cloud
        self._settings = settings
        self._context = context
        self._lock = lock
        self._mtus: dict[str, int] = {}
        # Servers and ports no router owned at the last look: removed if still so at the next
        # (a server claimed from the pool is in the store a moment after its tags change).
        self._suspects: set[str] = set()

    @classmethod
    def from_config(cls, conf: cfg.ConfigOpts, context: ProviderContext) -> NovaProvider:
        nova, management = conf.nova, conf.management
        if not management.network_id:
            raise ProviderError("[management] network_id is needed by the nova provider")
        settings = NovaSettings(
            management_network_id=management.network_id,
            management_subnet_id=management.subnet_id,
            image=nova.image,
            image_tag=nova.image_tag,
            flavor=nova.flavor,
            availability_zone=nova.availability_zone,
            server_group=nova.server_group,
            pool_size=nova.pool_size,
        )
        cloud = SdkCloud.connect(nova.cloud or conf.neutron.cloud, nova.api_timeout)
        return cls(cloud, settings, context, coordination_lock(conf))

    def check(self) -> None:
        """What the cloud must offer, checked before the orchestrator starts."""
        if not self._cloud.has_extension(IP_ALLOCATION_EXTENSION):
            raise ProviderError(
                "Neutron lacks the ip_allocation extension: Nova refuses ports without an "
                "address (the appliances' service ports) without it; add 'segments' to "
                "Neutron's [DEFAULT] service_plugins"
            )

    # -- the Provider interface ---------------------------------------------------------

    def boot(self, spec: InstanceSpec) -> Instance:
        # With the management port only: the router's ports are attached once the appliance
        # answers (plug), as for a server from the warm pool. (A tap created with the server
        # for a flat network stayed down on the bed's userspace OVS; attached ones come up.)
        server = self._server(spec.instance_id)
        if server is None:
            management = self._management_port(spec.instance_id, spec.router_id)
            server = self._create_server(
                spec.instance_id,
                management,
                [f"{ROUTER_TAG}{spec.router_id}"],
                self._cloud.image_id(spec.image or self._settings.image, self._settings.image_tag),
                self._cloud.flavor_id(spec.flavor or self._settings.flavor),
            )
            LOG.info(
                "router %s: server for instance %s requested", spec.router_id, spec.instance_id
            )
        # The server as Nova answered (no second look), its ports as Neutron has them.
        return self._observe(spec.instance_id, server)

    def plug(self, instance: Instance, port: PortSpec) -> Instance:
        server = self._server(instance.id)
        if server is None:
            raise ProviderError(f"instance {instance.id} has no server to plug port into")
        service = self._service_port(instance.id, instance.router_id, port)
        if service.device_id != server.id:
            self._cloud.attach_port(server.id, service.id)
            LOG.info(
                "router %s: port %s attached to instance %s (service port %s)",
                instance.router_id,
                port.port_id,
                instance.id,
                service.id,
            )
        return self._observe(instance.id, server)

    def unplug(self, instance: Instance, port_id: str) -> Instance:
        for service in self._cloud.ports(tags=[f"{PORT_TAG}{port_id}", self._itag(instance.id)]):
            self._remove_port(service)
        return self._observe(instance.id, self._server(instance.id))

    def delete(self, instance_id: str) -> None:
        for server in self._cloud.servers([self._itag(instance_id)]):
            if server.status not in GONE:
                self._cloud.delete_server(server.id)
        # No detach first: Nova refuses one on a server being deleted; deleting the port is
        # enough (Nova unplugs it, or already has).
        for port in self._cloud.ports(tags=[self._itag(instance_id)]):
            self._cloud.delete_port(port.id)

    def list(self) -> builtins.list[Instance]:
        found = []
        for server in self._cloud.servers([TAG]):
            instance_id = _tagged(server.tags, INSTANCE_TAG)
            if instance_id is not None:
                found.append(self._observe(instance_id, server))
        return found

    def get(self, instance_id: str) -> Instance | None:
        server = self._server(instance_id)
        ports = self._cloud.ports(tags=[self._itag(instance_id)])
        if server is None and not ports:
            return None
        return self._observe(instance_id, server, ports)

    # -- the warm pool and upkeep ----------------------------------------------------------

    def allocate_id(
        self, router_id: str, image: str | None = None, flavor: str | None = None
    ) -> str:
        if self._settings.pool_size == 0 or image or flavor:
            return str(uuid.uuid4())
        wanted = self._pool_tags()
        with self._lock():
            ready = [s for s in self._cloud.servers(wanted) if s.status == "ACTIVE"]
            if not ready:
                LOG.info("router %s: the warm pool is empty; booting a server", router_id)
                return str(uuid.uuid4())
            server = ready[0]
            instance_id = _tagged(server.tags, INSTANCE_TAG) or ""
            owned = [TAG, self._itag(instance_id), f"{ROUTER_TAG}{router_id}"]
            # Off the pool first: no other orchestrator can hand it out again.
            self._cloud.set_server_tags(server.id, owned)
        for port in self._cloud.ports(tags=[self._itag(instance_id)]):
            self._cloud.set_port_tags(port.id, sorted({*port.tags, f"{ROUTER_TAG}{router_id}"}))
        LOG.info("router %s: instance %s taken from the warm pool", router_id, instance_id)
        return instance_id

    def maintain(self, known_instances: Collection[str] = ()) -> None:
        """Refill the warm pool, drain what runs another image or flavor, and remove servers
        and ports of instances no router owns (seen so twice in a row)."""
        self._tend_pool()
        self._remove_orphans(set(known_instances))

    def _pool_tags(self) -> builtins.list[str]:
        image = self._cloud.image_id(self._settings.image, self._settings.image_tag)
        flavor = self._cloud.flavor_id(self._settings.flavor)
        return [POOL_TAG, f"{IMAGE_TAG}{image}", f"{FLAVOR_TAG}{flavor}"]

    def _tend_pool(self) -> None:
        pool = self._cloud.servers([POOL_TAG])
        wanted = set(self._pool_tags()) if self._settings.pool_size else set()
        fresh = [s for s in pool if wanted and wanted <= s.tags and s.status in RUNNING]
        for server in pool:
            if server not in fresh and server.status not in GONE:
                LOG.info("warm pool: removing server %s (%s)", server.id, server.status)
                self.delete(_tagged(server.tags, INSTANCE_TAG) or "")
        missing = self._settings.pool_size - len(fresh)
        if missing <= 0:
            return
        tags = sorted(wanted)
        image = _tagged(tags, IMAGE_TAG) or ""
        flavor = _tagged(tags, FLAVOR_TAG) or ""
        for _ in range(missing):
            instance_id = str(uuid.uuid4())
            management = self._management_port(instance_id, None)
            self._create_server(instance_id, management, tags, image, flavor)
            LOG.info("warm pool: booting instance %s", instance_id)

    def _remove_orphans(self, known: set[str]) -> None:
        owners: dict[str, str] = {}  # instance id -> what it is
        pooled: set[str] = set()
        for server in self._cloud.servers([TAG]):
            instance_id = _tagged(server.tags, INSTANCE_TAG)
            if instance_id is None:
                continue
            owners[instance_id] = f"server {server.id}"
            if POOL_TAG in server.tags:
                pooled.add(instance_id)
        for port in self._cloud.ports(tags=[TAG]):
            instance_id = _tagged(port.tags, INSTANCE_TAG)
            if instance_id is not None:
                owners.setdefault(instance_id, f"port {port.id}")
        orphans = set(owners) - known - pooled
        for instance_id in sorted(orphans & self._suspects):
            LOG.warning(
                "instance %s (%s): no router owns it; deleting", instance_id, owners[instance_id]
            )
            self.delete(instance_id)
        self._suspects = orphans - self._suspects

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _itag(instance_id: str) -> str:
        return f"{INSTANCE_TAG}{instance_id}"

    def _server(self, instance_id: str) -> ServerInfo | None:
        found = [s for s in self._cloud.servers([self._itag(instance_id)]) if s.status not in GONE]
        return found[0] if found else None

    def _port_tags(
        self, instance_id: str, router_id: str | None, kind: NetworkKind
    ) -> builtins.list[str]:
        tags = [TAG, self._itag(instance_id), f"{KIND_TAG}{kind}"]
        return tags + ([f"{ROUTER_TAG}{router_id}"] if router_id else [])

    def _management_port(self, instance_id: str, router_id: str | None) -> PortInfo:
        for port in self._cloud.ports(tags=[self._itag(instance_id), f"{KIND_TAG}management"]):
            return port
        return self._cloud.create_port(
            self._settings.management_network_id,
            f"astara-management-{instance_id}",
            self._port_tags(instance_id, router_id, "management"),
            subnet_id=self._settings.management_subnet_id,
        )

    def _service_port(self, instance_id: str, router_id: str, port: PortSpec) -> PortInfo:
        """The instance's service port for a router port: found, or made after removing one
        an instance being replaced still holds (the MAC is the same: one at a time)."""
        mine = None
        for found in self._cloud.ports(tags=[f"{PORT_TAG}{port.port_id}"]):
            if self._itag(instance_id) in found.tags and mine is None:
                mine = found
            else:
                self._remove_port(found)
        if mine is not None:
            return mine
        tags = [*self._port_tags(instance_id, router_id, port.kind), f"{PORT_TAG}{port.port_id}"]
        return self._cloud.create_port(
            port.network_id,
            f"astara-service-{port.port_id}",
            tags,
            mac=service_mac(port.port_id),
            addressless=True,
        )

    def _remove_port(self, port: PortInfo) -> None:
        if port.device_id:
            try:
                self._cloud.detach_port(port.device_id, port.id)
            except ProviderError as exc:
                # A dead server may refuse; deleting the port detaches it all the same (Nova
                # hears network-vif-deleted), and the port is what a replacement waits for.
                LOG.warning("port %s: detach failed (%s); deleting it", port.id, exc)
        self._cloud.delete_port(port.id)

    def _create_server(
        self,
        instance_id: str,
        management: PortInfo,
        tags: builtins.list[str],
        image_id: str,
        flavor_id: str,
    ) -> ServerInfo:
        bootstrap = self._bootstrap(instance_id, management)
        return self._cloud.create_server(
            name=f"astara-{instance_id}",
            image_id=image_id,
            flavor_id=flavor_id,
            port_ids=[management.id],
            user_data=bootstrap.to_user_data(),
            tags=sorted({TAG, self._itag(instance_id), *tags}),
            availability_zone=self._settings.availability_zone,
            server_group=self._settings.server_group,
        )

    def _bootstrap(self, instance_id: str, management: PortInfo) -> Bootstrap:
        if not management.addresses:
            raise ProviderError(f"management port {management.id} has no fixed IP")
        address = ipaddress.ip_address(management.addresses[0])
        prefixlen = self._cloud.subnet_prefixlen(management.subnet_ids[0])
        issued = self._context.ca.issue(f"appliance-{instance_id}", "server", ips=[address])
        heartbeat = None
        context = self._context
        if context.heartbeat_target is not None and context.heartbeat_key is not None:
            host, port = context.heartbeat_target
            heartbeat = HeartbeatTarget(
                host=ipaddress.ip_address(host),
                port=port,
                key_hex=context.heartbeat_key(instance_id).hex(),
                interval=context.heartbeat_interval,
            )
        return Bootstrap(
            instance_id=instance_id,
            management=ManagementLink(
                mac=management.mac, address=ipaddress.ip_interface(f"{address}/{prefixlen}")
            ),
            api_port=context.api_port,
            ca_pem=context.ca.cert_pem.decode(),
            cert_pem=issued.cert_pem.decode(),
            key_pem=issued.key_pem.decode(),
            heartbeat=heartbeat,
        )

    def _mtu(self, network_id: str) -> int:
        if network_id not in self._mtus:
            self._mtus[network_id] = self._cloud.network_mtu(network_id)
        return self._mtus[network_id]

    def _observe(
        self,
        instance_id: str,
        server: ServerInfo | None,
        ports: builtins.list[PortInfo] | None = None,
    ) -> Instance:
        if ports is None:
            ports = self._cloud.ports(tags=[self._itag(instance_id)])
        tags = server.tags if server is not None else frozenset().union(*(p.tags for p in ports))
        specs: builtins.list[PortSpec] = []
        address, prefixlen = "", None
        for port in ports:
            kind = _tagged(port.tags, KIND_TAG)
            if kind == "management":
                specs.insert(0, self._spec(port, port.id, "management"))
                if port.addresses:
                    address = port.addresses[0]
                    prefixlen = self._cloud.subnet_prefixlen(port.subnet_ids[0])
            elif server is not None and port.device_id == server.id:
                served = _tagged(port.tags, PORT_TAG) or port.id
                specs.append(
                    self._spec(port, served, "external" if kind == "external" else "internal")
                )
        state = _state(server) if address else "missing"
        return Instance(
            id=instance_id,
            router_id=_tagged(tags, ROUTER_TAG) or "",
            provider=self.name,
            management_address=address,
            state=state,
            ports=tuple(specs),
            management_prefixlen=prefixlen,
            fault=server.fault if server is not None and state == "failed" else None,
        )

    def _spec(self, port: PortInfo, port_id: str, kind: NetworkKind) -> PortSpec:
        return PortSpec(
            port_id=port_id,
            network_id=port.network_id,
            mac=port.mac,
            kind=kind,
            mtu=min(max(self._mtu(port.network_id), 1280), 9216),
        )


def coordination_lock(conf: cfg.ConfigOpts) -> Callable[[], ContextManager[object]]:
    """The warm pool's lock: tooz, on ``[coordination] backend_url`` or files in state_path.

    The coordinator starts at the first hand-out, not here: the provider is also built in the
    parent before it forks its workers, which must hold no thread of tooz's then."""
    url = conf.coordination.backend_url or f"file://{conf.state_path}/locks"
    started: list[coordination.CoordinationDriver] = []

    @contextlib.contextmanager
    def held() -> Iterator[object]:
        if not started:
            coordinator = coordination.get_coordinator(url, f"astara-{uuid.uuid4()}".encode())
            coordinator.start(start_heart=True)
            started.append(coordinator)
        with started[0].get_lock(b"astara-warm-pool") as lock:
            yield lock

    return held
