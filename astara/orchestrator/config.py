"""oslo.config options of astara-orchestrator, and ``list_opts`` for oslo-config-generator.

Defaults suit a small host (2 cores): 2 worker processes of 4 threads each. The AMQP
connection is oslo.messaging's own ``[DEFAULT] transport_url``.
"""

from __future__ import annotations

import socket

from oslo_config import cfg

from astara.orchestrator.health import DEFAULT_MISS_THRESHOLD, DEFAULT_PROBE_TIMEOUT
from astara.wire.defaults import API_PORT
from astara.wire.document import DEFAULT_LEASE_SECONDS, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS
from astara.wire.heartbeat import DEFAULT_INTERVAL as DEFAULT_HEARTBEAT_INTERVAL

DEFAULT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "state_path",
        default="/var/lib/astara",
        help="Directory of the orchestrator's own files: its certificate authority (ca/) and "
        "its client certificate for the appliances (created on first start and kept).",
    ),
    cfg.StrOpt(
        "notifications_exchange",
        default="neutron",
        help="AMQP exchange Neutron publishes its notifications on.",
    ),
    cfg.StrOpt(
        "notifications_topic",
        default="notifications",
        help="Notification topic to listen to (Neutron's [oslo_messaging_notifications] topics).",
    ),
    cfg.StrOpt(
        "notifications_pool",
        default="astara-orchestrator",
        help="Listener pool: a queue of its own, so other consumers of Neutron's "
        "notifications (Ceilometer...) keep receiving theirs.",
    ),
    cfg.IntOpt(
        "notification_threads",
        default=1,
        min=1,
        help="Threads that turn notifications into router events (used instead of "
        "executor_thread_pool_size, whose 64 idle threads would each wake every second). "
        "Handling a notification only queues an event (re-reading a project's routers, which "
        "a tenant's port change asks for, is done on a thread of its own), so one thread "
        "keeps up with bursts and keeps them in order.",
    ),
    cfg.PortOpt(
        "appliance_api_port",
        default=API_PORT,
        help="TCP port of the appliances' REST API on the management network.",
    ),
    cfg.FloatOpt(
        "certificate_check_interval",
        default=3600.0,
        min=1.0,
        help="Seconds between checks of the orchestrator's client certificate and every "
        "appliance's certificate; one past half its lifetime (825 days) is replaced, without "
        "downtime, by a new one from the same CA.",
    ),
    cfg.FloatOpt(
        "resync_interval",
        default=300.0,
        min=1.0,
        mutable=True,
        help="Seconds between full re-reads of every router from Neutron, which catch what "
        "notifications missed. A resync also follows every start and broker outage.",
    ),
    cfg.PortOpt(
        "metrics_port",
        default=0,
        help="Serve Prometheus metrics on 127.0.0.1 at this port (0: off).",
    ),
    cfg.FloatOpt(
        "appliance_apply_timeout",
        default=60.0,
        min=1.0,
        help="Seconds an appliance may take to apply a document (a Nova appliance first "
        "waits for NICs just attached to appear); other appliance calls take a few seconds.",
    ),
    cfg.URIOpt(
        "metadata_upstream_url",
        schemes=["http", "https"],
        help="Where appliances forward instances' metadata requests (Nova's metadata API, "
        "e.g. http://nova-metadata:8775), reachable from the appliances' management network. "
        "Unset: the appliances serve no metadata. Needs metadata_proxy_shared_secret.",
    ),
    cfg.StrOpt(
        "metadata_proxy_shared_secret",
        secret=True,
        help="The secret Nova's metadata API checks instance identities with (Nova's "
        "[neutron] metadata_proxy_shared_secret, with [neutron] service_metadata_proxy = "
        "True). The orchestrator signs each Nova instance's id with it when it renders a "
        "router; the appliances only receive the signatures, never the secret.",
    ),
]

NEUTRON_OPTS: list[cfg.Opt] = [
    cfg.URIOpt(
        "endpoint_override",
        help="Neutron API URL, bypassing the Keystone catalogue (standalone and test setups).",
    ),
    cfg.StrOpt(
        "auth_type",
        default="password",
        help="keystoneauth plugin used to reach Neutron; 'none' for a noauth Neutron.",
    ),
    cfg.StrOpt(
        "cloud",
        help="A clouds.yaml entry to take Keystone credentials from (auth_type password).",
    ),
    cfg.BoolOpt(
        "plugin_events",
        default=False,
        help="Astara's Neutron plugin is loaded: take router, interface, gateway and floating "
        "IP events from its topic (it also sees changes notifications miss), ignore "
        "Neutron's notifications for the same changes, and leave the routers of Neutron's "
        "other providers alone (the plugin says which routers are Astara's).",
    ),
    cfg.BoolOpt(
        "write_status",
        default=False,
        help="Write each router's status (ACTIVE, ALLOCATING, ERROR) and its ports' status "
        "back to Neutron through the Astara plugin's status API (needs the plugin).",
    ),
]

WORKERS_OPTS: list[cfg.Opt] = [
    cfg.IntOpt(
        "processes",
        default=2,
        min=1,
        help="Worker processes; each owns the routers whose id hashes to it.",
    ),
    cfg.IntOpt(
        "threads",
        default=4,
        min=1,
        help="Threads per worker process stepping the routers' state machines.",
    ),
    cfg.IntOpt(
        "queue_size",
        default=1000,
        min=1,
        help="Events each worker process's queue holds. When it is full, further events wait "
        "in the parent, merged per router (so a burst takes memory per router, not per "
        "event, and no change is lost).",
    ),
]

PROVIDER_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "name",
        default="netns",
        help="Instance provider (stevedore name in astara.providers): 'netns' runs each "
        "appliance in a Linux network namespace on this host; 'nova' boots each appliance as "
        "a Nova server from the appliance image ([nova] and [management] options).",
    ),
    cfg.StrOpt(
        "state_path",
        default="/var/lib/astara/instances",
        help="Directory for the netns provider's per-instance files (pid, log, certificates).",
    ),
    cfg.StrOpt(
        "prefix",
        default="ast",
        help="netns provider: prefix of every namespace, bridge and veth it creates "
        "(1-6 letters or digits).",
    ),
    cfg.StrOpt(
        "management_subnet",
        default="fdca:3ba5:a17a:acda::/64",
        help="netns provider: subnet of the management link between this host and the "
        "appliances; this host takes its first address.",
    ),
    cfg.FloatOpt(
        "boot_timeout",
        default=60.0,
        min=1.0,
        help="Seconds an instance may take from boot to answering its API before it is "
        "replaced (a Nova server from a cold image takes 30 to 60 s under QEMU without KVM).",
    ),
    cfg.FloatOpt(
        "housekeeping_interval",
        default=30.0,
        min=1.0,
        help="Seconds between two rounds of the provider's upkeep (Nova: refill the warm pool, "
        "delete servers and ports no router owns).",
    ),
]

NOVA_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "cloud",
        help="clouds.yaml entry of Astara's service user for Nova, Glance and Neutron "
        "(unset: [neutron] cloud). It needs the admin role: service ports without port "
        "security and port bindings are admin-only in Neutron's default policy.",
    ),
    cfg.StrOpt(
        "image",
        help="Appliance image, by Glance id or name. Unset: the newest active image tagged "
        "image_tag.",
    ),
    cfg.StrOpt(
        "image_tag",
        default="astara-appliance",
        help="Glance tag of the appliance images (used when image is unset).",
    ),
    cfg.StrOpt(
        "flavor",
        default="astara.appliance",
        help="Nova flavor of appliance servers, by id or name (1 vCPU, 512 MiB, 2 GiB disk "
        "is enough for a router).",
    ),
    cfg.StrOpt(
        "availability_zone",
        help="Nova availability zone of appliance servers (unset: Nova's default).",
    ),
    cfg.StrOpt(
        "server_group",
        help="Nova server group (id) every appliance server joins: make it "
        "soft-anti-affinity so the two appliances of an HA pair land on different hosts.",
    ),
    cfg.IntOpt(
        "pool_size",
        default=0,
        min=0,
        max=100,
        help="Appliance servers kept booted and unconfigured, ready for new routers (0: no "
        "warm pool). Refilled in the background; drained when the image or flavor changes.",
    ),
    cfg.FloatOpt(
        "api_timeout",
        default=30.0,
        min=1.0,
        help="Seconds one call to Nova, Glance or Neutron may take.",
    ),
]

COORDINATION_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "backend_url",
        secret=True,
        help="tooz URL of the lock orchestrators share (the warm pool's hand-out): "
        "redis://host:6379 or etcd3+http://host:2379 when several hosts run orchestrators. "
        "Unset: file locks in state_path (one host).",
    ),
]

HEALTH_OPTS: list[cfg.Opt] = [
    cfg.PortOpt(
        "heartbeat_port",
        default=5555,
        help="UDP port the orchestrator receives appliance heartbeats on (on its end of the "
        "management link).",
    ),
    cfg.FloatOpt(
        "heartbeat_interval",
        default=DEFAULT_HEARTBEAT_INTERVAL,
        min=0.1,
        help="Seconds between an appliance's heartbeats. With the defaults a dead appliance is "
        "found in miss_threshold intervals plus, when it hangs rather than refuses, "
        "probe_timeout (1.5 + 2.5 s); each appliance sends 1/heartbeat_interval datagrams a "
        "second (10,000 a second for 5,000 routers at 0.5 s).",
    ),
    cfg.FloatOpt(
        "heartbeat_rate_per_source",
        default=10.0,
        min=0.1,
        help="Heartbeats a second one source address may send on average (an appliance sends "
        "one per heartbeat_interval); more are dropped before their signature is checked and "
        "counted as rejected, reason rate_limited.",
    ),
    cfg.IntOpt(
        "heartbeat_burst_per_source",
        default=20,
        min=1,
        help="Heartbeats one source address may send at once above its rate.",
    ),
    cfg.IntOpt(
        "heartbeat_sources",
        default=65536,
        min=16,
        help="Source addresses the heartbeat rate limit keeps track of at a time (memory "
        "bound; the least recently heard is forgotten first).",
    ),
    cfg.IntOpt(
        "miss_threshold",
        default=DEFAULT_MISS_THRESHOLD,
        min=1,
        help="Heartbeat intervals of silence after which an appliance is probed over its API; "
        "silent and not answering the probe means dead, and it is replaced.",
    ),
    cfg.FloatOpt(
        "probe_timeout",
        default=DEFAULT_PROBE_TIMEOUT,
        min=0.1,
        help="Seconds an appliance has to answer a probe (a hung one counts as dead). An "
        "appliance starved of CPU is spared if it answers within miss_threshold - 1 intervals "
        "plus this of its last heartbeat: with the defaults, a stall of 3 s.",
    ),
    cfg.FloatOpt(
        "breaker_max_dead_share",
        default=0.3,
        min=0.01,
        max=0.99,
        mutable=True,
        help="Circuit breaker: when more than this share of the appliances dies within "
        "breaker_window, replacement stops and an alarm is raised (that is a network or "
        "control-plane problem, not an appliance problem). It closes when health returns, or "
        "when an operator sends the orchestrator SIGUSR1.",
    ),
    cfg.FloatOpt(
        "breaker_window",
        default=120.0,
        min=1.0,
        mutable=True,
        help="Circuit breaker: the window, in seconds, deaths are counted over.",
    ),
    cfg.IntOpt(
        "breaker_min_deaths",
        default=3,
        min=1,
        mutable=True,
        help="Circuit breaker: fewer deaths than this never open it (small fleets).",
    ),
    cfg.IntOpt(
        "max_failures",
        default=5,
        min=1,
        help="Consecutive failures after which a router goes to ERROR until it changes in "
        "Neutron or an operator rebuilds it.",
    ),
    cfg.FloatOpt(
        "backoff_initial",
        default=1.0,
        min=0.1,
        help="Seconds to wait after a router's first failure; doubled after each further one.",
    ),
    cfg.FloatOpt(
        "backoff_max",
        default=60.0,
        min=1.0,
        help="Upper bound of the wait between retries of a failing router.",
    ),
]

API_OPTS: list[cfg.Opt] = [
    cfg.HostAddressOpt(
        "bind_host",
        default="127.0.0.1",
        help="Address the management API listens on ('::' or '0.0.0.0' for every one).",
    ),
    cfg.PortOpt(
        "port",
        default=44250,
        help="TCP port of the management API (0: any free port, logged at start).",
    ),
    cfg.StrOpt(
        "auth_strategy",
        default="keystone",
        choices=[
            ("keystone", "Keystone tokens, checked by keystonemiddleware ([keystone_authtoken])"),
            ("noauth", "no authentication: every caller is an admin (logged as a warning)"),
        ],
        help="How callers of the management API are authenticated.",
    ),
    cfg.IntOpt(
        "threads",
        default=4,
        min=1,
        help="Threads serving management API requests.",
    ),
    cfg.IntOpt(
        "connection_limit",
        default=100,
        min=1,
        help="Connections the management API accepts at once.",
    ),
    cfg.IntOpt(
        "max_body_size",
        default=65536,
        min=1024,
        help="Largest request body accepted, in bytes (larger ones get 413).",
    ),
]

DATABASE_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "connection",
        default="sqlite:////var/lib/astara/orchestrator.sqlite",
        secret=True,
        help="SQLAlchemy URL of the orchestrator's store (SQLite, MariaDB through "
        "mysql+pymysql://, or PostgreSQL).",
    ),
]

MANAGEMENT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "network_id",
        help="Neutron network the orchestrator and the appliances booted by Nova talk on. "
        "This host gets a port of its own on it (found by a device_id derived from the host "
        "name and the device_owner 'astara:management').",
    ),
    cfg.StrOpt(
        "subnet_id",
        help="Subnet of the management network this host's port takes its address from "
        "(unset: the one Neutron picks).",
    ),
    cfg.HostnameOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<this host's name>",
        help="Neutron binding host of this host's management port: the host name the L2 "
        "agent on this machine reports (its own [DEFAULT] host).",
    ),
    cfg.StrOpt(
        "interface_driver",
        default="ovs",
        choices=[
            ("ovs", "an Open vSwitch internal interface on the integration bridge"),
            ("noop", "nothing on the host (tests)"),
        ],
        help="How this host's management port is plugged.",
    ),
    cfg.StrOpt(
        "integration_bridge",
        default="br-int",
        help="The L2 agent's integration bridge (ML2/OVS: [ovs] integration_bridge).",
    ),
    cfg.StrOpt(
        "interface_name",
        default="astara-mgmt",
        regex=r"^[A-Za-z0-9_.-]{1,15}$",
        help="Name of this host's management interface (at most 15 characters).",
    ),
    cfg.FloatOpt(
        "port_active_timeout",
        default=60.0,
        min=1.0,
        help="Seconds the L2 agent has to wire this host's management port (Neutron reports "
        "it ACTIVE) before start-up fails.",
    ),
]

DHCP_OPTS: list[cfg.Opt] = [
    cfg.IntOpt(
        "lease_duration",
        default=DEFAULT_LEASE_SECONDS,
        min=MIN_LEASE_SECONDS,
        max=MAX_LEASE_SECONDS,
        help="Seconds a DHCP lease the appliances hand out lasts (Neutron's "
        "dhcp_lease_duration; clients renew at half of it).",
    ),
]

DNS_OPTS: list[cfg.Opt] = [
    cfg.ListOpt(
        "upstream_servers",
        item_type=cfg.types.IPAddress(),
        default=[],
        help="Resolvers the appliances forward names to (names they do not serve themselves) "
        "on networks whose subnets list no dns_nameservers of their own. Empty: such names "
        "are not forwarded anywhere (no public resolver is ever used by default).",
    ),
    cfg.StrOpt(
        "default_domain",
        default="openstacklocal",
        regex=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
        help="Domain the appliances serve port names under on networks without a dns_domain "
        "of their own (Neutron's [DEFAULT] dns_domain, without its trailing dot). Empty: "
        "bare names only.",
    ),
]

GROUPS: dict[str, list[cfg.Opt]] = {
    "DEFAULT": DEFAULT_OPTS,
    "neutron": NEUTRON_OPTS,
    "workers": WORKERS_OPTS,
    "provider": PROVIDER_OPTS,
    "health": HEALTH_OPTS,
    "api": API_OPTS,
    "database": DATABASE_OPTS,
    "management": MANAGEMENT_OPTS,
    "nova": NOVA_OPTS,
    "coordination": COORDINATION_OPTS,
    "dhcp": DHCP_OPTS,
    "dns": DNS_OPTS,
}


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Every option by group, for oslo-config-generator (namespace astara.orchestrator)."""
    return [(group, list(opts)) for group, opts in GROUPS.items()]


def register_opts(conf: cfg.ConfigOpts) -> None:
    for group, opts in GROUPS.items():
        conf.register_opts(opts, group=None if group == "DEFAULT" else group)
