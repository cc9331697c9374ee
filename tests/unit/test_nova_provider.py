"""The Nova provider's decisions against the in-memory cloud: which ports and servers it makes,
how it finds them again (tags, never names), how it moves a router's ports on replacement,
the warm pool and the removal of leftovers. The real services are in tests/nova."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astara.common.tls import CertificateAuthority
from astara.providers.base import InstanceSpec, PortSpec, ProviderContext, ProviderError
from astara.providers.nova import NovaProvider, NovaSettings, service_mac
from astara.providers.nova_memory import InMemoryCloud
from astara.wire.bootstrap import Bootstrap

pytestmark = pytest.mark.unit

MGMT_NET, MGMT_SUBNET = "mgmt-net", "mgmt-subnet"
ROUTER = "5f1c2d4e-0000-4000-8000-000000000001"
ROUTER_PORT = "7a0b1c2d-0000-4000-8000-0000000000aa"
GATEWAY_PORT = "7a0b1c2d-0000-4000-8000-0000000000bb"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def cloud() -> InMemoryCloud:
    return InMemoryCloud(
        images={"img-1": ("astara-appliance", frozenset({"astara-appliance"}))},
        flavors={"fl-1": "astara.appliance"},
        subnets={MGMT_SUBNET: (MGMT_NET, "fd00:1::/64"), "t-subnet": ("tenant", "10.0.0.0/24")},
        mtus={MGMT_NET: 1450, "tenant": 1450},
    )


def provider(cloud: InMemoryCloud, ca: CertificateAuthority, pool_size: int = 0) -> NovaProvider:
    context = ProviderContext(
        ca=ca,
        heartbeat_target=("fd00:1::2", 4789),
        heartbeat_key=lambda instance_id: instance_id.encode()[:32].ljust(32, b"k"),
    )
    settings = NovaSettings(MGMT_NET, MGMT_SUBNET, pool_size=pool_size)
    return NovaProvider(cloud, settings, context)


def spec(instance_id: str = "inst-1", *ports: PortSpec) -> InstanceSpec:
    management = PortSpec(
        port_id="mgmt-x", network_id="management", mac="02:00:00:00:00:01", kind="management"
    )
    return InstanceSpec(instance_id=instance_id, router_id=ROUTER, ports=(management, *ports))


def port(port_id: str = ROUTER_PORT, kind: str = "internal") -> PortSpec:
    return PortSpec(port_id=port_id, network_id="tenant", mac="fa:16:3e:aa:bb:cc", kind=kind)  # type: ignore[arg-type]


def test_boot_makes_a_tagged_server_then_router_ports_attach_through_service_ports(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    booted = nova.boot(spec("inst-1", port(), port(GATEWAY_PORT, "external")))
    (server,) = cloud.servers_by_id.values()
    assert {"astara", "astara-instance:inst-1", f"astara-router:{ROUTER}"} <= server.info.tags
    # The management port only: the router's ports are attached once the server is up.
    (management,) = booted.ports
    assert management.kind == "management" and management.mtu == 1450
    assert booted.management_address.startswith("fd00:1::") and booted.management_prefixlen == 64
    cloud.activate_all()
    booted = nova.plug(nova.plug(booted, port()), port(GATEWAY_PORT, "external"))
    # The router's ports are served through addressless service ports with derived MACs.
    assert {(p.port_id, p.mac, p.kind) for p in booted.ports[1:]} == {
        (ROUTER_PORT, service_mac(ROUTER_PORT), "internal"),
        (GATEWAY_PORT, service_mac(GATEWAY_PORT), "external"),
    }
    for info in cloud.ports_by_id.values():
        if "astara-kind:management" not in info.tags:
            assert info.addresses == () and info.device_id == server.info.id
    # The config drive: this instance's identity, address, credentials and heartbeat key.
    bootstrap = Bootstrap.model_validate(json.loads(server.user_data))
    assert bootstrap.instance_id == "inst-1"
    assert bootstrap.management.mac == management.mac
    assert str(bootstrap.management.address) == f"{booted.management_address}/64"
    assert "BEGIN" in bootstrap.key_pem.get_secret_value()
    assert bootstrap.heartbeat is not None and bootstrap.heartbeat.port == 4789
    assert bootstrap.heartbeat.key_hex.get_secret_value() == b"inst-1".ljust(32, b"k").hex()


def test_a_restarted_orchestrator_finds_its_server_by_tags_not_names(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    first = provider(cloud, ca)
    booted = first.boot(spec("inst-1"))
    cloud.activate_all()
    first.plug(booted, port())
    (server,) = cloud.servers_by_id.values()
    for port_id, info in list(cloud.ports_by_id.items()):
        cloud.ports_by_id[port_id] = type(info)(**{**info.__dict__, "name": "renamed"})
    again = provider(cloud, ca)  # a new process: nothing in memory
    found = again.get("inst-1")
    assert found is not None and found.router_id == ROUTER and found.state == "running"
    assert [p.port_id for p in found.ports] == [found.ports[0].port_id, ROUTER_PORT]
    assert [i.id for i in again.list()] == ["inst-1"]
    # Booting it again adopts it: no second server.
    again.boot(spec("inst-1", port()))
    assert list(cloud.servers_by_id) == [server.info.id]


def test_a_server_nova_failed_is_failed_with_novas_reason(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    nova.boot(spec("inst-1"))
    (server_id,) = cloud.servers_by_id
    cloud.set_status(server_id, "ERROR", "No valid host was found. There are not enough hosts")
    found = nova.get("inst-1")
    assert found is not None and found.state == "failed"
    assert found.fault is not None and "No valid host" in found.fault
    cloud.set_status(server_id, "SHUTOFF")
    assert nova.get("inst-1").state == "stopped"  # type: ignore[union-attr]


def test_a_refused_boot_says_why(cloud: InMemoryCloud, ca: CertificateAuthority) -> None:
    cloud.refuse_boots("Quota exceeded for instances: Requested 1, but already used 10 of 10")
    nova = provider(cloud, ca)
    with pytest.raises(ProviderError, match="Quota exceeded for instances"):
        nova.boot(spec("inst-1", port()))
    nova.delete("inst-1")
    assert cloud.ports_by_id == {} and cloud.servers_by_id == {}


def test_ports_attach_and_detach_live_once_each(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    booted = nova.boot(spec("inst-1"))
    cloud.activate_all()
    plugged = nova.plug(booted, port())
    plugged = nova.plug(plugged, port())  # again: nothing more
    assert [c for c in cloud.calls if c.startswith(("attach", "create_port astara-service"))] == [
        f"create_port astara-service-{ROUTER_PORT}",
        f"attach_port {cloud.ports(tags=[f'astara-port:{ROUTER_PORT}'])[0].id}",
    ]
    assert [p.port_id for p in plugged.ports][1:] == [ROUTER_PORT]
    unplugged = nova.unplug(plugged, ROUTER_PORT)
    assert [p.kind for p in unplugged.ports] == ["management"]
    assert cloud.ports(tags=[f"astara-port:{ROUTER_PORT}"]) == []
    assert len(cloud.servers_by_id) == 1  # the server stays: no reboot


def test_a_replacement_takes_the_router_port_with_the_same_mac(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    old = nova.boot(spec("old", port()))
    new = nova.boot(spec("new"))
    cloud.activate_all()
    taken = nova.plug(new, port())
    (service,) = cloud.ports(tags=[f"astara-port:{ROUTER_PORT}"])
    assert "astara-instance:new" in service.tags and service.mac == service_mac(ROUTER_PORT)
    assert [p.mac for p in taken.ports][1:] == [service_mac(ROUTER_PORT)]
    assert [p.kind for p in nova.get(old.id).ports] == ["management"]  # type: ignore[union-attr]


def test_a_port_is_taken_from_a_dead_server_that_refuses_the_detach(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    old = nova.boot(spec("old"))
    cloud.activate_all()
    nova.plug(old, port())
    new = nova.boot(spec("new"))
    cloud.activate_all()
    cloud.detach_refusal = "Cannot detach: the domain is not running"
    taken = nova.plug(new, port())
    assert [p.mac for p in taken.ports][1:] == [service_mac(ROUTER_PORT)]
    (service,) = cloud.ports(tags=[f"astara-port:{ROUTER_PORT}"])
    assert "astara-instance:new" in service.tags


def test_delete_removes_the_server_whatever_its_state_and_every_port(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    nova.boot(spec("inst-1", port()))
    (server_id,) = cloud.servers_by_id
    cloud.set_status(server_id, "ERROR", "boom")
    nova.delete("inst-1")
    nova.delete("inst-1")  # again: nothing to do
    assert cloud.servers_by_id == {} and cloud.ports_by_id == {}
    assert nova.get("inst-1") is None


def pooled(cloud: InMemoryCloud) -> set[str]:
    """The instance ids of the warm pool's servers."""
    prefix = "astara-instance:"
    return {
        tag.removeprefix(prefix)
        for server in cloud.servers(["astara-pool"])
        for tag in server.tags
        if tag.startswith(prefix)
    }


def test_the_warm_pool_is_filled_handed_out_and_drained_on_image_change(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca, pool_size=2)
    nova.maintain()
    assert len(cloud.servers(["astara-pool"])) == 2
    # Not ACTIVE yet: a router gets a server of its own.
    assert nova.allocate_id(ROUTER) not in pooled(cloud)
    cloud.activate_all()
    claimed = nova.allocate_id(ROUTER)
    instance = nova.get(claimed)
    assert instance is not None and instance.router_id == ROUTER
    assert len(cloud.servers(["astara-pool"])) == 1
    nova.maintain([claimed])  # refilled; the claimed one is a router's
    assert len(cloud.servers(["astara-pool"])) == 2
    assert nova.get(claimed) is not None
    # A new image: the pool's servers of the old one go, new ones boot.
    cloud.images = {"img-2": ("astara-appliance-2", frozenset({"astara-appliance"}))}
    nova.maintain([claimed])
    pool = cloud.servers(["astara-pool"])
    assert len(pool) == 2 and all("astara-image:img-2" in s.tags for s in pool)
    # An operator's image choice never comes from the pool.
    cloud.activate_all()
    assert nova.allocate_id(ROUTER, image="img-2") not in pooled(cloud)
    assert len(cloud.servers(["astara-pool"])) == 2


def test_leftovers_no_router_owns_go_at_the_second_sighting(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    nova.boot(spec("kept", port()))
    nova.boot(spec("orphan", port("7a0b1c2d-0000-4000-8000-0000000000cc")))
    nova.maintain(["kept"])
    assert nova.get("orphan") is not None, "one sighting is not enough"
    nova.maintain(["kept"])
    assert nova.get("orphan") is None
    assert nova.get("kept") is not None


def test_start_refuses_a_neutron_without_ip_allocation(
    cloud: InMemoryCloud, ca: CertificateAuthority
) -> None:
    nova = provider(cloud, ca)
    nova.check()
    cloud.extensions.clear()
    with pytest.raises(ProviderError, match="segments"):
        nova.check()


def test_a_missing_image_is_a_clear_error(cloud: InMemoryCloud, ca: CertificateAuthority) -> None:
    cloud.images.clear()
    with pytest.raises(ProviderError, match="astara-appliance"):
        provider(cloud, ca).boot(spec("inst-1"))


def test_from_config_needs_the_management_network(tmp_path: Path, ca: CertificateAuthority) -> None:
    from oslo_config import cfg

    from astara.orchestrator import config

    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf([], project="astara-test")
    with pytest.raises(ProviderError, match=r"\[management\] network_id"):
        NovaProvider.from_config(conf, ProviderContext(ca=ca))
