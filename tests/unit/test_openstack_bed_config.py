"""The OpenStack bed's configuration: Keystone everywhere, TCG, the OVS agent's datapath and
firewall, privsep without sudo, Nova told of port status, secrets kept out of the layout's
names."""

from __future__ import annotations

from pathlib import Path

import pytest

from astara.testing.openstack_bed import config
from astara.testing.openstack_bed.config import Layout, Ports

pytestmark = pytest.mark.unit

VENV = Path("/cache/openstack-venv-x")


def _layout() -> Layout:
    secrets = {"rabbit": "r/+", "metadata": "m"}
    secrets |= {f"db-{service}": f"p-{service}" for service in config.DATABASES}
    users = ("admin", *config.SERVICE_USERS, *config.DEMO_USERS)
    secrets |= {f"user-{user}": f"u-{user}" for user in users}
    return Layout(
        name="bed",
        state_dir=Path("/state"),
        venv=VENV,
        host="h1",
        ports=Ports(1, 2, 3, 4, 5, 6, 7),
        metadata_host="::",
        secrets=secrets,
    )


def test_every_api_checks_keystone_tokens() -> None:
    layout = _layout()
    files = {path.name: sections for path, sections in config.all_files(layout).items()}
    for name, service in (
        ("glance-api.conf", "glance"),
        ("placement.conf", "placement"),
        ("nova.conf", "nova"),
        ("neutron.conf", "neutron"),
    ):
        authtoken = files[name]["keystone_authtoken"]
        assert authtoken["username"] == service
        assert authtoken["password"] == f"u-{service}"
        assert authtoken["auth_url"] == "http://127.0.0.1:1/v3"
    assert files["glance-api.conf"]["paste_deploy"]["flavor"] == "keystone"
    assert files["placement.conf"]["api"]["auth_strategy"] == "keystone"
    assert files["nova.conf"]["api"]["auth_strategy"] == "keystone"
    assert files["neutron.conf"]["DEFAULT"]["auth_strategy"] == "keystone"


def test_nova_runs_qemu_under_tcg_and_waits_for_neutrons_vif_events() -> None:
    layout = _layout()
    nova, neutron = config.nova_conf(layout), config.neutron_conf(layout)
    assert nova["DEFAULT"]["compute_driver"] == "libvirt.LibvirtDriver"
    assert nova["libvirt"]["virt_type"] == "qemu"
    assert nova["DEFAULT"]["vif_plugging_is_fatal"] == "true"
    assert neutron["DEFAULT"]["notify_nova_on_port_status_changes"] == "true"
    assert nova["neutron"]["service_metadata_proxy"] == "true"
    assert nova["neutron"]["metadata_proxy_shared_secret"] == layout.secrets["metadata"]


def test_neutron_binds_ports_with_the_ovs_agent_on_the_userspace_datapath() -> None:
    layout = _layout()
    ml2, agent = config.ml2_conf(layout), config.ovs_agent_conf(layout)
    assert ml2["ml2"]["mechanism_drivers"] == "openvswitch"
    assert ml2["ml2"]["tenant_network_types"] == "vxlan"
    assert agent["ovs"]["datapath_type"] == "netdev"
    assert agent["ovs"]["bridge_mappings"] == "public:br-ex"
    assert agent["securitygroup"]["firewall_driver"] == "openvswitch"
    assert "astara" in config.neutron_conf(layout)["DEFAULT"]["service_plugins"].split(",")


def test_privsep_starts_the_venvs_helper_directly_for_every_context() -> None:
    layout = _layout()
    nova, agent = config.nova_conf(layout), config.ovs_agent_conf(layout)
    for sections, names in ((nova, config.NOVA_PRIVSEP), (agent, config.NEUTRON_PRIVSEP)):
        for name in names:
            command = sections[name]["helper_command"]
            assert command.startswith(f"{VENV}/bin/privsep-helper --config-file /state/etc/")
            assert "sudo" not in command


def test_each_service_has_its_own_database_user_and_vhost() -> None:
    layout = _layout()
    assert layout.db_url("nova", "nova_cell0") == (
        "mysql+pymysql://bed_nova:p-nova@127.0.0.1/bed_nova_cell0"
    )
    assert layout.db_url("neutron") == "mysql+pymysql://bed_neutron:p-neutron@127.0.0.1/bed_neutron"
    assert layout.transport_url("nova") == "rabbit://bed:r%2F%2B@127.0.0.1:5672/bed-nova"
    assert layout.metadata_url == "http://[::]:5"
