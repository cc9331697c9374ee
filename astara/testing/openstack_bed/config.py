"""The OpenStack bed's configuration files, rendered from its layout: pure, no I/O.

Every service authenticates with Keystone (no noauth anywhere): its API checks tokens through
keystonemiddleware, and it calls the other services as its own user of the ``service``
project, found through the catalog. Each service has its own database user and RabbitMQ
vhost. The daemons run as root without sudo, so every privsep context names its helper
explicitly and Neutron's agent runs its few root commands through ``env`` (a no-op wrapper).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from astara.testing.bedkit import Sections
from astara.testing.mariadb import database_url

REGION = "RegionOne"
SERVICE_PROJECT = "service"
# Keystone users of the service project and what they are for.
SERVICE_USERS = ("nova", "neutron", "glance", "placement", "astara")
DEMO_USERS = {"demo-member": "member", "demo-reader": "reader", "demo-admin": "admin"}
# Each service's databases (the first one names its database user).
DATABASES = {
    "keystone": ("keystone",),
    "glance": ("glance",),
    "placement": ("placement",),
    "nova": ("nova_api", "nova", "nova_cell0"),
    "neutron": ("neutron",),
}
VHOSTS = ("nova", "neutron")
OVSDB = "unix:/var/run/openvswitch/db.sock"
INTEGRATION_BRIDGE = "br-int"
EXTERNAL_BRIDGE = "br-ex"
BRIDGES = (INTEGRATION_BRIDGE, "br-tun", EXTERNAL_BRIDGE)
PHYSNET = "public"
ASTARA_L3_PROVIDER = "L3_ROUTER_NAT:astara:astara.neutron.l3_driver.AstaraL3Driver:default"
# Privsep contexts the compute node and the OVS agent start, by their config section.
NOVA_PRIVSEP = ("nova_sys_admin", "vif_plug_ovs_privileged", "vif_plug_linux_bridge_privileged")
NEUTRON_PRIVSEP = (
    "privsep",
    "privsep_dhcp_release",
    "privsep_ovs_vsctl",
    "privsep_namespace",
    "privsep_conntrack",
    "privsep_link",
)


@dataclass(frozen=True)
class Ports:
    keystone: int
    glance: int
    placement: int
    nova: int
    metadata: int
    neutron: int
    openflow: int


@dataclass(frozen=True)
class Layout:
    """Where everything of one bed is: names, paths, ports and secrets."""

    name: str
    state_dir: Path
    venv: Path
    host: str
    ports: Ports
    # The address Nova's metadata API listens on: this host's port on the management network.
    metadata_host: str
    secrets: Mapping[str, str]

    def etc(self, service: str) -> Path:
        return self.state_dir / "etc" / service

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

    @property
    def auth_url(self) -> str:
        return self.url("keystone") + "/v3"

    @property
    def metadata_url(self) -> str:
        host = f"[{self.metadata_host}]" if ":" in self.metadata_host else self.metadata_host
        return f"http://{host}:{self.ports.metadata}"

    def database(self, name: str) -> str:
        return f"{self.name}_{name}"

    def db_user(self, service: str) -> str:
        return f"{self.name}_{service}"

    def db_url(self, service: str, database: str | None = None) -> str:
        name = self.database(database or DATABASES[service][0])
        return database_url(name, self.db_user(service), self.secrets[f"db-{service}"])

    def vhost(self, service: str) -> str:
        return f"{self.name}-{service}"

    @property
    def rabbit_user(self) -> str:
        return self.name

    def transport_url(self, service: str) -> str:
        password = quote(self.secrets["rabbit"], safe="")
        return f"rabbit://{self.rabbit_user}:{password}@127.0.0.1:5672/{self.vhost(service)}"

    def password(self, user: str) -> str:
        return self.secrets[f"user-{user}"]


def _service_auth(layout: Layout, user: str) -> dict[str, str]:
    """keystoneauth options for calling other services as ``user`` of the service project."""
    return {
        "auth_type": "password",
        "auth_url": layout.auth_url,
        "username": user,
        "password": layout.password(user),
        "user_domain_name": "Default",
        "project_name": SERVICE_PROJECT,
        "project_domain_name": "Default",
        "region_name": REGION,
        "valid_interfaces": "public",
    }


def _authtoken(layout: Layout, user: str) -> dict[str, str]:
    auth = _service_auth(layout, user)
    del auth["valid_interfaces"]
    return {"www_authenticate_uri": layout.url("keystone"), **auth}


def _privsep(layout: Layout, config_files: tuple[Path, ...], sections: tuple[str, ...]) -> Sections:
    # Without helper_command privsep runs "sudo privsep-helper"; there is no sudo here and the
    # daemons are root already.
    command = " ".join(
        [str(layout.venv / "bin/privsep-helper")]
        + [f"--config-file {path}" for path in config_files]
    )
    return {section: {"helper_command": command} for section in sections}


def _common(layout: Layout, service: str) -> dict[str, str]:
    return {"debug": "false", "use_stderr": "true", "state_path": str(layout.state_dir / service)}


def keystone_conf(layout: Layout) -> Sections:
    keys = layout.state_dir / "keystone"
    return {
        "DEFAULT": {"debug": "false", "use_stderr": "true"},
        "database": {"connection": layout.db_url("keystone")},
        "token": {"provider": "fernet"},
        "fernet_tokens": {"key_repository": str(keys / "fernet-keys")},
        "fernet_receipts": {"key_repository": str(keys / "fernet-keys")},
        "credential": {"key_repository": str(keys / "credential-keys")},
        # bcrypt's default 12 rounds cost a quarter second per password check on 2 cores,
        # paid at every token issued; a test bed's random passwords need no such stretching.
        "identity": {"password_hash_rounds": "4"},
    }


def glance_conf(layout: Layout) -> Sections:
    store = layout.state_dir / "glance"
    return {
        "DEFAULT": {
            **_common(layout, "glance"),
            "enabled_backends": "fs:file",
        },
        "database": {"connection": layout.db_url("glance")},
        "paste_deploy": {"flavor": "keystone"},
        "keystone_authtoken": _authtoken(layout, "glance"),
        "glance_store": {"default_backend": "fs"},
        "fs": {"filesystem_store_datadir": str(store / "images")},
        "os_glance_staging_store": {"filesystem_store_datadir": str(store / "staging")},
        "os_glance_tasks_store": {"filesystem_store_datadir": str(store / "tasks")},
        "oslo_concurrency": {"lock_path": str(store / "locks")},
        "oslo_messaging_notifications": {"driver": "noop"},
    }


def placement_conf(layout: Layout) -> Sections:
    return {
        "DEFAULT": {"debug": "false", "use_stderr": "true"},
        "api": {"auth_strategy": "keystone"},
        "placement_database": {"connection": layout.db_url("placement")},
        "keystone_authtoken": _authtoken(layout, "placement"),
    }


def nova_conf(layout: Layout) -> Sections:
    state = layout.state_dir / "nova"
    conf = layout.etc("nova") / "nova.conf"
    return {
        "DEFAULT": {
            **_common(layout, "nova"),
            "host": layout.host,
            "my_ip": "127.0.0.1",
            "transport_url": layout.transport_url("nova"),
            "compute_driver": "libvirt.LibvirtDriver",
            "instances_path": str(state / "instances"),
            # A router's appliances share 2 cores with everything else: overcommit CPUs.
            "cpu_allocation_ratio": "16.0",
            "reserved_host_memory_mb": "1024",
            "mkisofs_cmd": "genisoimage",
            "vif_plugging_is_fatal": "true",
            "vif_plugging_timeout": "120",
        },
        "api": {"auth_strategy": "keystone"},
        "api_database": {"connection": layout.db_url("nova", "nova_api")},
        "database": {"connection": layout.db_url("nova", "nova")},
        "conductor": {"workers": "1"},
        "scheduler": {"workers": "1", "discover_hosts_in_cells_interval": "-1"},
        "libvirt": {
            # TCG: /dev/kvm here is a PVM KVM that hangs stock guest kernels.
            "virt_type": "qemu",
            "cpu_mode": "none",
        },
        "os_vif_ovs": {"ovsdb_connection": OVSDB, "isolate_vif": "true"},
        "keystone_authtoken": _authtoken(layout, "nova"),
        "service_user": {"send_service_user_token": "true", **_authtoken(layout, "nova")},
        "placement": _service_auth(layout, "placement"),
        "neutron": {
            **_service_auth(layout, "neutron"),
            "service_metadata_proxy": "true",
            "metadata_proxy_shared_secret": layout.secrets["metadata"],
        },
        "glance": {"region_name": REGION, "valid_interfaces": "public"},
        "oslo_concurrency": {"lock_path": str(state / "locks")},
        "oslo_messaging_notifications": {"driver": "noop"},
        "vnc": {"enabled": "false"},
        "spice": {"enabled": "false"},
        **_privsep(layout, (conf,), NOVA_PRIVSEP),
    }


def neutron_conf(layout: Layout) -> Sections:
    state = layout.state_dir / "neutron"
    return {
        "DEFAULT": {
            **_common(layout, "neutron"),
            "core_plugin": "ml2",
            # segments: the ip_allocation extension, which Nova needs to accept a port
            # without addresses (the appliances' service ports).
            "service_plugins": "router,flavors,segments,astara",
            "auth_strategy": "keystone",
            "api_paste_config": str(layout.venv / "etc/neutron/api-paste.ini"),
            "transport_url": layout.transport_url("neutron"),
            # Nova waits for network-vif-plugged before it starts a server.
            "notify_nova_on_port_status_changes": "true",
            "notify_nova_on_port_data_changes": "true",
            "api_workers": "1",
            "rpc_workers": "1",
            "rpc_state_report_workers": "0",
            "host": layout.host,
            "l3_ha": "false",
            "router_distributed": "false",
        },
        "database": {"connection": layout.db_url("neutron")},
        "keystone_authtoken": _authtoken(layout, "neutron"),
        "nova": {**_service_auth(layout, "neutron"), "endpoint_type": "public"},
        "oslo_messaging_notifications": {"driver": "messagingv2"},
        "oslo_concurrency": {"lock_path": str(state / "locks")},
        "agent": {"root_helper": "env"},
    }


def ml2_conf(layout: Layout) -> Sections:
    return {
        "ml2": {
            "type_drivers": "flat,vlan,vxlan",
            "tenant_network_types": "vxlan",
            "mechanism_drivers": "openvswitch",
            "extension_drivers": "port_security",
        },
        "ml2_type_flat": {"flat_networks": PHYSNET},
        "ml2_type_vlan": {"network_vlan_ranges": PHYSNET},
        "ml2_type_vxlan": {"vni_ranges": "1000:1999"},
    }


def ovs_agent_conf(layout: Layout) -> Sections:
    files = tuple(layout.etc("neutron") / name for name in ("neutron.conf", "ovs_agent.ini"))
    return {
        "ovs": {
            "integration_bridge": INTEGRATION_BRIDGE,
            # The kernel here has no Open vSwitch datapath: bridges run in vswitchd.
            "datapath_type": "netdev",
            "bridge_mappings": f"{PHYSNET}:{EXTERNAL_BRIDGE}",
            "ovsdb_connection": OVSDB,
            "of_listen_address": "127.0.0.1",
            "of_listen_port": str(layout.ports.openflow),
            # One host: VXLAN tunnels would only go to other hosts' agents.
            "local_ip": "127.0.0.1",
        },
        "agent": {"tunnel_types": "vxlan", "root_helper": "env"},
        "securitygroup": {"firewall_driver": "openvswitch", "enable_security_group": "true"},
        **_privsep(layout, files, NEUTRON_PRIVSEP),
    }


def all_files(layout: Layout) -> dict[Path, Sections]:
    """Every INI file of the bed by path (all hold secrets: 0600)."""
    nova, neutron = layout.etc("nova"), layout.etc("neutron")
    return {
        layout.etc("keystone") / "keystone.conf": keystone_conf(layout),
        layout.etc("glance") / "glance-api.conf": glance_conf(layout),
        layout.etc("placement") / "placement.conf": placement_conf(layout),
        nova / "nova.conf": nova_conf(layout),
        neutron / "neutron.conf": neutron_conf(layout),
        neutron / "ml2_conf.ini": ml2_conf(layout),
        neutron / "ovs_agent.ini": ovs_agent_conf(layout),
    }
