"""astara-orchestrator: hear Neutron, keep every router's appliance booted and configured.

The parent process runs the listener (Neutron notifications), the broker watch and the
periodic resync, and hands each router's events to the worker process that owns it; each
worker process steps its routers' state machines on a small pool of threads.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import openstack
import oslo_messaging
import prometheus_client
from oslo_config import cfg
from oslo_log import log as oslo_logging
from oslo_policy import policy as oslo_policy
from prometheus_client import CollectorRegistry

from astara.common.tls import CertificateAuthority
from astara.drivers.metadata import MetadataService
from astara.drivers.router import NeutronRouterSource, ServiceSettings
from astara.neutron import protocol
from astara.orchestrator import config
from astara.orchestrator.api import models as api_models
from astara.orchestrator.api import policies
from astara.orchestrator.api.app import create_app
from astara.orchestrator.api.server import ApiServer, pipeline, www_authenticate
from astara.orchestrator.appliance_client import (
    DEFAULT_APPLY_TIMEOUT,
    ApplianceClient,
    ApplianceError,
)
from astara.orchestrator.breaker import CircuitBreaker
from astara.orchestrator.control import Control
from astara.orchestrator.dispatcher import Dispatcher
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.feed import ProjectPolls
from astara.orchestrator.health import HealthMonitor, provider_first_probe
from astara.orchestrator.health_loop import (
    HealthLoop,
    HeartbeatKeys,
    WeakSecret,
    replacement_allowed,
)
from astara.orchestrator.heartbeat import HeartbeatReceiver, RateLimit
from astara.orchestrator.housekeeping import Housekeeping
from astara.orchestrator.listener import BrokerWatch, NotificationListener
from astara.orchestrator.local_port import (
    LocalPortError,
    ManagementSettings,
    ensure_local_port,
    interface_driver,
)
from astara.orchestrator.metrics import FleetCollector, Metrics
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.neutron_status import NeutronStatusReporter
from astara.orchestrator.reconciler import (
    LoggingStatusReporter,
    RouterReconciler,
    Settings,
    StatusReporter,
    periodic_poll,
)
from astara.orchestrator.rotation import (
    CLIENT_IDENTITY_FILE,
    CertificateRotation,
    renew_client_identity,
)
from astara.orchestrator.state import Policy
from astara.orchestrator.store import Store
from astara.orchestrator.telemetry import Board, Telemetry
from astara.orchestrator.worker import Worker
from astara.providers.base import ProviderContext, ProviderError, provider_from_config

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientCredentials:
    """The orchestrator's client certificate for the appliances' mutual TLS."""

    ca: Path
    cert: Path
    key: Path


def load_credentials(state_path: Path) -> tuple[CertificateAuthority, ClientCredentials]:
    ca = CertificateAuthority.load_or_create(state_path / "ca")
    identity = state_path / CLIENT_IDENTITY_FILE  # key and certificate in one file
    creds = ClientCredentials(ca=state_path / "ca" / "ca.pem", cert=identity, key=identity)
    renew_client_identity(ca, identity, datetime.now(UTC))
    if not creds.ca.exists():
        creds.ca.write_bytes(ca.cert_pem)
    return ca, creds


def neutron_connection(conf: cfg.ConfigOpts) -> openstack.connection.Connection:
    group = conf.neutron
    if group.auth_type == "none":
        return openstack.connection.Connection(
            auth_type="none",
            auth={"endpoint": group.endpoint_override},
            network_endpoint_override=group.endpoint_override,
        )
    return openstack.connect(cloud=group.cloud, network_endpoint_override=group.endpoint_override)


class ConfigError(ValueError):
    """Options that cannot work together; the message says what to set."""


def metadata_service(conf: cfg.ConfigOpts) -> MetadataService | None:
    """Nova's metadata API for the appliances' proxy, or None when none is configured."""
    if not conf.metadata_upstream_url:
        return None
    if not conf.metadata_proxy_shared_secret:
        # Nova would accept signatures made with an empty key: anyone could make them.
        raise ConfigError(
            "[DEFAULT] metadata_upstream_url is set but metadata_proxy_shared_secret is not: "
            "set it to Nova's [neutron] metadata_proxy_shared_secret, or unset the URL"
        )
    return MetadataService(conf.metadata_upstream_url, conf.metadata_proxy_shared_secret)


def policy_from(conf: cfg.ConfigOpts) -> Policy:
    return Policy(
        boot_timeout=conf.provider.boot_timeout,
        backoff_base=conf.health.backoff_initial,
        backoff_cap=conf.health.backoff_max,
        max_failures=conf.health.max_failures,
    )


def provider_context(
    conf: cfg.ConfigOpts, ca: CertificateAuthority, host_address: str
) -> ProviderContext:
    return ProviderContext(
        ca=ca,
        api_port=conf.appliance_api_port,
        heartbeat_target=(host_address, conf.health.heartbeat_port),
        heartbeat_key=HeartbeatKeys(Path(conf.state_path)).key_for,
        heartbeat_interval=conf.health.heartbeat_interval,
    )


def build_worker(
    conf: cfg.ConfigOpts, host_address: str, index: int, telemetry: Telemetry
) -> Worker:
    """Everything one worker process needs, built inside that process."""
    ca, creds = load_credentials(Path(conf.state_path))
    provider = provider_from_config(conf, provider_context(conf, ca, host_address))
    prefixlen = int(conf.provider.management_subnet.rsplit("/", 1)[1])
    neutron = neutron_connection(conf)
    plugin = NeutronStatusReporter(neutron)
    status: StatusReporter = plugin if conf.neutron.write_status else LoggingStatusReporter()
    reconciler = RouterReconciler(
        # With the plugin, routers of Neutron's other providers are left alone.
        source=NeutronRouterSource(neutron, plugin.owns if conf.neutron.plugin_events else None),
        store=Store(conf.database.connection),
        provider=provider,
        clients=functools.partial(
            _client, creds, conf.appliance_api_port, apply_timeout=conf.appliance_apply_timeout
        ),
        status=status,
        settings=Settings(
            management_prefixlen=prefixlen,
            metadata=metadata_service(conf),
            services=ServiceSettings(
                dns_upstreams=tuple(ipaddress.ip_address(ip) for ip in conf.dns.upstream_servers),
                dns_domain=conf.dns.default_domain or None,
                dhcp_lease_seconds=conf.dhcp.lease_duration,
            ),
            policy=policy_from(conf),
        ),
        replacement_allowed=replacement_allowed(Path(conf.state_path)),
        telemetry=telemetry,
    )
    return Worker(reconciler.step, threads=conf.workers.threads, name=f"worker{index}")


def _client(
    creds: ClientCredentials,
    port: int,
    address: str,
    timeout: float = 3.0,
    apply_timeout: float = DEFAULT_APPLY_TIMEOUT,
) -> ApplianceClient:
    return ApplianceClient(
        address,
        port,
        ca=creds.ca,
        cert=creds.cert,
        key=creds.key,
        timeout=timeout,
        apply_timeout=apply_timeout,
    )


def listen_targets(conf: cfg.ConfigOpts) -> list[oslo_messaging.Target]:
    targets = [
        oslo_messaging.Target(exchange=conf.notifications_exchange, topic=conf.notifications_topic)
    ]
    if conf.neutron.plugin_events:
        targets.append(oslo_messaging.Target(exchange=protocol.EXCHANGE, topic=protocol.TOPIC))
    return targets


def management_host_address(conf: cfg.ConfigOpts) -> str:
    """The orchestrator's address on the management network: with the netns provider the
    management link's first address; with Nova, that of this host's own Neutron port there
    (made and plugged now if need be)."""
    if conf.provider.name != "nova":
        subnet = ipaddress.ip_network(conf.provider.management_subnet)
        return str(subnet.network_address + 1)
    settings = ManagementSettings.from_conf(conf)
    network = openstack.connect(cloud=conf.nova.cloud or conf.neutron.cloud).network
    port = ensure_local_port(network, interface_driver(conf.management.interface_driver), settings)
    return str(ipaddress.ip_interface(port.addresses[0]).ip)


def build_health_loop(
    conf: cfg.ConfigOpts,
    host_address: str,
    store: Store,
    dispatch: Callable[[Event], None],
    registry: CollectorRegistry,
) -> HealthLoop:
    state_path = Path(conf.state_path)
    ca, creds = load_credentials(state_path)
    health = conf.health
    limit = RateLimit(
        health.heartbeat_rate_per_source,
        health.heartbeat_burst_per_source,
        health.heartbeat_sources,
    )
    receiver = HeartbeatReceiver((host_address, health.heartbeat_port), registry, limit)
    loop: HealthLoop

    # Made in the probe's thread, after the workers were forked (as the housekeeper's is).
    provider = functools.cache(
        lambda: provider_from_config(conf, provider_context(conf, ca, host_address))
    )

    def answers(address: str) -> bool:
        try:
            with _client(creds, conf.appliance_api_port, address, health.probe_timeout) as client:
                client.health()
        except ApplianceError:
            return False
        return True

    probe = provider_first_probe(lambda iid: loop.probe_address(iid), provider, answers)

    monitor = HealthMonitor(
        receiver,
        probe,
        interval=health.heartbeat_interval,
        miss_threshold=health.miss_threshold,
        probe_timeout=health.probe_timeout,
        registry=registry,
    )
    breaker = CircuitBreaker(
        registry,
        window=health.breaker_window,
        max_dead_share=health.breaker_max_dead_share,
        min_deaths=health.breaker_min_deaths,
    )
    loop = HealthLoop(
        store,
        receiver,
        monitor,
        breaker,
        HeartbeatKeys(state_path),
        dispatch,
        state_path,
        # Half an interval: a silence is noticed at most that late.
        interval=min(1.0, health.heartbeat_interval / 2),
        # Two intervals: one lost datagram does not cost an appliance API call.
        fresh_within=2 * health.heartbeat_interval,
    )
    return loop


class Orchestrator:
    def __init__(self, conf: cfg.ConfigOpts, host_address: str) -> None:
        """``host_address``: this host's address on the management network."""
        self._conf = conf
        self._host_address = host_address
        self._store = Store(conf.database.connection)
        self._neutron = neutron_connection(conf)
        self._dispatcher = Dispatcher(
            conf.workers.processes,
            functools.partial(build_worker, conf, host_address),
            conf.workers.queue_size,
        )
        self._housekeeping: Housekeeping | None = None
        self._project_polls = ProjectPolls(self.resync)
        ca, creds = load_credentials(Path(conf.state_path))
        self._certificates = CertificateRotation(
            ca,
            creds.cert,
            self._store.all_instances,
            functools.partial(_client, creds, conf.appliance_api_port),
            lambda: datetime.now(UTC),
            conf.certificate_check_interval,
        )
        self._stop = threading.Event()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.health = build_health_loop(
            conf, host_address, self._store, self._dispatcher.dispatch, self.registry
        )
        self._board = Board(self._dispatcher.channel, self.metrics)
        self.registry.register(
            FleetCollector(
                self._store.count_routers_by_state,
                self.health.health_counts,
                self._board.latest,
                self._dispatcher.queue_sizes,
            )
        )
        self._changes: list[api_models.OptionChange] = []
        conf.register_mutate_hook(self._mutated)
        self.control = Control(
            self._store,
            self._dispatcher.dispatch,
            self.health,
            self._dispatcher,
            self._board.latest,
            self.reload_config,
        )
        enforcer = oslo_policy.Enforcer(conf)
        enforcer.register_defaults(policies.list_rules())
        app = create_app(self.control, enforcer, lambda: www_authenticate(conf))
        self.api = ApiServer(pipeline(app, conf), conf)
        self._listener = NotificationListener(
            conf,
            None,
            self._on_events,
            pool=conf.notifications_pool,
            targets=listen_targets(conf),
            plugin_events=conf.neutron.plugin_events,
            threads=conf.notification_threads,
        )
        # The listener's transport registered [DEFAULT] transport_url.
        self._watch = BrokerWatch.for_url(conf, conf.transport_url, self.resync)

    def run(self) -> None:
        self._dispatcher.start()  # fork before any thread of ours exists
        self._start_housekeeping()
        self._project_polls.start()
        self._certificates.start()
        self._board.start()
        self.api.start()
        self._listener.start()
        self._watch.start()
        self.health.start()
        if self._conf.metrics_port:
            prometheus_client.start_http_server(
                self._conf.metrics_port, addr="127.0.0.1", registry=self.registry
            )
        LOG.info("orchestrator started; resyncing every router")
        self.resync()
        while not self._stop.is_set():
            self._reconcile_spread()
        self.api.stop()
        if self._housekeeping is not None:
            self._housekeeping.stop()
        self.health.stop()
        self._watch.stop()
        self._listener.stop()
        self._project_polls.stop()
        self._certificates.stop()
        self._dispatcher.stop()
        self._board.stop()
        LOG.info("orchestrator stopped")

    def _start_housekeeping(self) -> None:
        ca, _ = load_credentials(Path(self._conf.state_path))
        provider = provider_from_config(
            self._conf, provider_context(self._conf, ca, self._host_address)
        )
        self._housekeeping = Housekeeping(
            provider,
            lambda: {instance.id for instance in self._store.all_instances()},
            self._conf.provider.housekeeping_interval,
        )
        self._housekeeping.start()

    def _reconcile_spread(self) -> None:
        """One periodic reconcile of every router, spread evenly over resync_interval."""
        routers = self._known_routers()
        interval = self._conf.resync_interval
        if not routers:
            self._stop.wait(interval)
            return
        gap = interval / len(routers)
        for router_id, project in routers:
            if self._stop.wait(gap):
                return
            event = periodic_poll(router_id, project, self.health, datetime.now(UTC))
            if event is None:
                LOG.debug(
                    "router %s: periodic reconcile skipped, its appliance is silent", router_id
                )
                continue
            self._dispatcher.dispatch(event)

    def stop(self) -> None:
        self._stop.set()

    def _known_routers(self, project_id: str | None = None) -> list[tuple[str, str]]:
        """Every router Neutron or the store knows of (of one project, if given)."""
        query = {"project_id": project_id} if project_id else {}
        started = time.monotonic()
        try:
            known = {(r.id, r.project_id) for r in self._neutron.network.routers(**query)}
        except Exception:
            self.metrics.neutron_call("list_routers", time.monotonic() - started, True)
            LOG.exception("could not list routers from Neutron; will try again")
            return []
        self.metrics.neutron_call("list_routers", time.monotonic() - started, False)
        known |= {(r.id, r.project_id) for r in self._store.list_routers(project_id)}
        return sorted(known)

    def resync(self, project_id: str | None = None) -> None:
        """Poll every router now (of one project, if given)."""
        known = self._known_routers(project_id)
        now = datetime.now(UTC)
        for router_id, project in known:
            self._dispatcher.dispatch(
                Event(ResourceType.ROUTER, router_id, project, EventAction.POLL, "resync", now)
            )
        LOG.info(
            "resync%s: polled %d routers",
            f" of project {project_id}" if project_id else "",
            len(known),
        )

    def reload_config(self) -> list[api_models.OptionChange]:
        """Re-read the configuration files; the options marked mutable take effect."""
        self._changes = []
        self._conf.mutate_config_files()
        return self._changes

    def _mutated(
        self, conf: cfg.ConfigOpts, fresh: Mapping[tuple[str | None, str], tuple[object, object]]
    ) -> None:
        health = conf.health
        self.health.configure_breaker(
            window=health.breaker_window,
            max_dead_share=health.breaker_max_dead_share,
            min_deaths=health.breaker_min_deaths,
        )
        for (group, name), (old, new) in sorted(fresh.items(), key=str):
            option = name if group in (None, "DEFAULT") else f"{group}.{name}"
            self._changes.append(
                api_models.OptionChange(
                    option=option,
                    old=None if old is None else str(old),
                    new=None if new is None else str(new),
                )
            )
            LOG.warning("configuration reloaded: %s is now %s (was %s)", option, new, old)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.resource_type is ResourceType.PROJECT:
                self._project_polls.ask(event.resource_id)  # Neutron is read off this thread
            else:
                self._dispatcher.dispatch(event)


def parse_config(argv: Sequence[str]) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    oslo_logging.register_options(conf)
    # One line per appliance request would drown the router-level lines.
    oslo_logging.set_defaults(
        default_log_levels=[*oslo_logging.get_default_log_levels(), "httpx=WARNING"]
    )
    conf(
        list(argv),
        project="astara",
        prog="astara-orchestrator",
        description="Keep every Neutron router's Astara appliance booted, configured and in "
        "step with Neutron. Options come from the INI file given with --config-file (a sample: "
        "etc/astara/orchestrator.ini.sample).",
    )
    return conf


def main(argv: Sequence[str] | None = None) -> int:
    conf = parse_config(sys.argv[1:] if argv is None else argv)
    oslo_logging.setup(conf, "astara")
    try:
        metadata_service(conf)  # before any process starts: a bad setting stops here
        Path(conf.state_path).mkdir(parents=True, exist_ok=True, mode=0o700)
        HeartbeatKeys(Path(conf.state_path))  # ...and so does a bad heartbeat secret
    except (ConfigError, WeakSecret) as exc:
        LOG.error("%s", exc)
        print(f"astara-orchestrator: {exc}", file=sys.stderr)
        return 2
    upgrade(conf.database.connection)
    ca, _ = load_credentials(Path(conf.state_path))
    try:
        host_address = management_host_address(conf)
        # A provider the cloud cannot serve stops here, saying what to change.
        provider_from_config(conf, provider_context(conf, ca, host_address)).check()
    except (ProviderError, LocalPortError) as exc:
        LOG.error("%s", exc)
        print(f"astara-orchestrator: {exc}", file=sys.stderr)
        return 2
    orchestrator = Orchestrator(conf, host_address)
    signal.signal(signal.SIGTERM, lambda *_: orchestrator.stop())
    signal.signal(signal.SIGINT, lambda *_: orchestrator.stop())
    signal.signal(signal.SIGUSR1, lambda *_: orchestrator.health.clear_breaker())
    orchestrator.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
