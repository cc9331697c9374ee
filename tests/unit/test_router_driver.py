"""The router driver's rendering, from payloads recorded on the real Neutron 29 test bed."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from astara.drivers.metadata import MetadataService, nova_signature
from astara.drivers.router import (
    ManagementPort,
    RouterSnapshot,
    ServiceSettings,
    hostname_for,
    plugged_ports,
    render,
    snapshot_from_api,
)
from astara.orchestrator.reconciler import snapshot_digest
from astara.wire.document import ApplianceConfig, problems

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"
ROUTER_ID = "40181cd3-7eeb-434c-8030-5997695388ad"
PRIVATE_NET = "ec36e515-a818-48c9-bcd4-29ec2f27da90"
BACKEND_NET = "dfb94241-a674-4da2-8c32-3fd86eb3c3e6"
PUBLIC_NET = "569792e3-a571-4403-8f48-2fca30779ed2"
VM1_PORT = "29086449-ba71-4e44-9537-7f03e748e3d6"
MGMT = ManagementPort(
    network_id="mgmt",
    mac="fa:16:3e:00:00:01",
    addresses=(ipaddress.ip_interface("fdca:3ba5:a17a:acda::10/64"),),
)
METADATA_URL = "http://[fdca:3ba5:a17a:acda::1]:8775/"
METADATA = MetadataService(METADATA_URL, "nova-shared-secret")
VM1_INSTANCE = "57b4e3db-cffe-4fd1-8333-e3a6f8c8bd3b"
# printf %s <VM1_INSTANCE> | openssl dgst -sha256 -hmac nova-shared-secret: what Nova computes
# (hmac.new(secret, instance_id, sha256).hexdigest() in nova/api/metadata/handler.py).
VM1_SIGNATURE = "4cef46b86a2696b687517ce42172e1e1799a76e2046fc278a83f2dc2cea2c7a5"


def recorded() -> dict[str, Any]:
    """The recorded router r1 plus the hand-written port forwardings, as API answers."""
    raw: dict[str, Any] = json.loads((FIXTURES / "neutron_router_r1.json").read_text())
    forwards = json.loads((FIXTURES / "neutron_port_forwardings.json").read_text())
    raw["floatingips"] = raw["floatingips"] + forwards["floatingips"]
    raw["port_forwardings"] = forwards["port_forwardings"]
    return raw


def snapshot_of(raw: dict[str, Any]) -> RouterSnapshot:
    return snapshot_from_api(
        router=raw["router"],
        router_ports=raw["ports"],
        subnets=raw["subnets"],
        networks=raw["networks"],
        network_ports=raw["network_ports"],
        floating_ips=raw["floatingips"],
        port_forwardings=raw["port_forwardings"],
        bgp_speakers=raw.get("bgp_speakers"),
        bgp_peers=raw.get("bgp_peers"),
    )


def rendered(
    raw: dict[str, Any] | None = None, metadata: MetadataService | None = METADATA
) -> ApplianceConfig:
    return render(snapshot_of(raw or recorded()), 7, MGMT, metadata)


def network(config: ApplianceConfig, network_id: str) -> Any:
    return next(net for net in config.networks if net.id == network_id)


def test_recorded_router_renders_a_document_without_problems() -> None:
    config = rendered()
    assert problems(config) == []
    assert config.generation == 7
    assert config.router_id == ROUTER_ID
    assert [net.kind for net in config.networks] == [
        "management",
        "external",
        "internal",
        "internal",
    ]


def test_each_network_gets_the_nic_of_its_router_port_with_the_network_mtu() -> None:
    config = rendered()
    backend = network(config, BACKEND_NET)
    assert backend.interface_mac == "fa:16:3e:c1:14:c4"
    assert [str(a) for a in backend.addresses] == ["10.0.1.1/24"]
    mtus = {iface.mac: iface.mtu for iface in config.interfaces}
    assert mtus == {
        "fa:16:3e:00:00:01": 1500,
        "fa:16:3e:08:12:ae": 1500,
        "fa:16:3e:c1:14:c4": 1450,
        "fa:16:3e:19:8d:e2": 1450,
    }
    # Every NIC of a router port names it (the management NIC is Astara's own, no port).
    ports = {iface.mac: iface.port_id for iface in config.interfaces}
    assert ports.pop("fa:16:3e:00:00:01") is None
    router_ports = {port["id"] for port in recorded()["ports"]}
    assert len(ports) == 3 and set(ports.values()) <= router_ports


def test_ipv4_and_ipv6_router_ports_on_one_network_share_one_nic() -> None:
    snapshot = snapshot_of(recorded())
    config = render(snapshot, 1, MGMT)
    private = network(config, PRIVATE_NET)
    assert private.interface_mac == "fa:16:3e:19:8d:e2"
    assert [str(a) for a in private.addresses] == ["10.0.0.1/24", "fd00:1::/64"]
    slaac = next(s for s in private.subnets if s.cidr.version == 6)
    assert (slaac.ipv6_ra_mode, slaac.ipv6_address_mode) == ("slaac", "slaac")
    assert [p.mac_address for p in plugged_ports(snapshot)] == [
        "fa:16:3e:08:12:ae",
        "fa:16:3e:c1:14:c4",
        "fa:16:3e:19:8d:e2",
    ]


def test_gateway_port_becomes_the_external_network_and_mgmt_port_the_management_one() -> None:
    config = rendered()
    external = config.network("external")
    assert external is not None and external.id == PUBLIC_NET
    assert [str(a) for a in external.addresses] == ["203.0.113.49/24"]
    assert external.allocations == []
    management = config.network("management")
    assert management is not None
    assert (management.id, management.interface_mac) == ("mgmt", MGMT.mac)
    assert list(management.addresses) == list(MGMT.addresses)


def test_subnets_carry_dhcp_dns_and_host_routes() -> None:
    private = network(rendered(), PRIVATE_NET)
    v4 = next(s for s in private.subnets if s.cidr.version == 4)
    assert v4.dhcp_enabled is True
    assert [str(ip) for ip in v4.dns_nameservers] == ["192.0.2.53", "192.0.2.54"]
    assert [(str(r.destination), str(r.nexthop)) for r in v4.host_routes] == [
        ("172.16.0.0/16", "10.0.0.254")
    ]
    backend = network(rendered(), BACKEND_NET)
    assert [s.dhcp_enabled for s in backend.subnets] == [False]


def test_allocations_skip_router_and_dhcp_ports_and_name_hosts_by_ip() -> None:
    private = network(rendered(), PRIVATE_NET)
    by_port = {a.port_id: a for a in private.allocations}
    # vm1 and the port without a requested IP (it got a SLAAC address); not the router's two
    # ports on this network, not the network:dhcp port.
    assert set(by_port) == {VM1_PORT, "31169011-9b26-4516-a2fc-0a790bbd0fca"}
    vm1 = by_port[VM1_PORT]
    assert vm1.hostname == "host-10-0-0-5"
    assert vm1.mac == "fa:16:3e:be:a2:ce"
    assert [str(ip) for ip in vm1.ips] == ["10.0.0.5", "fd00:1::f816:3eff:febe:a2ce"]


def test_a_port_dns_name_wins_over_the_address_name() -> None:
    raw = recorded()
    vm1 = next(p for p in raw["network_ports"] if p["id"] == VM1_PORT)
    vm1["dns_name"] = "web-1"
    allocation = next(
        a for a in network(rendered(raw), PRIVATE_NET).allocations if a.port_id == VM1_PORT
    )
    assert allocation.hostname == "web-1"


def test_networks_serve_names_under_their_dns_domain_else_the_operators() -> None:
    raw = recorded()
    private = next(n for n in raw["networks"] if n["id"] == PRIVATE_NET)
    private["dns_domain"] = "Tenant.Example."  # as Neutron's DNS integration stores it
    backend = next(n for n in raw["networks"] if n["id"] == BACKEND_NET)
    backend["dns_domain"] = "-not-a-domain."
    dns = ServiceSettings(dns_upstreams=(ipaddress.ip_address("192.0.2.53"),), dns_domain="cloud")
    doc = render(snapshot_of(raw), 7, MGMT, METADATA, services=dns)
    assert network(doc, PRIVATE_NET).dns_domain == "tenant.example"
    assert network(doc, BACKEND_NET).dns_domain == "cloud"  # unservable: logged, default
    assert [str(ip) for ip in doc.dns_upstreams] == ["192.0.2.53"]
    assert problems(doc) == []
    plain = rendered()
    assert network(plain, PRIVATE_NET).dns_domain is None
    assert plain.dns_upstreams == []
    # The reconciler re-renders every router when the operator's DNS settings change.
    snapshot = snapshot_of(recorded())
    assert snapshot_digest(snapshot, METADATA, dns) != snapshot_digest(snapshot, METADATA)


def test_extra_dhcp_options_reach_the_port_and_one_that_cannot_is_left_out_alone() -> None:
    raw = recorded()
    vm1 = next(p for p in raw["network_ports"] if p["id"] == VM1_PORT)
    vm1["extra_dhcp_opts"] = [
        {"opt_name": "bootfile-name", "opt_value": "pxelinux.0", "ip_version": 4},
        {"opt_name": "23", "opt_value": "[2001:db8::53]", "ip_version": 6},
        {"opt_name": "router", "opt_value": "10.0.0.1\ninjected", "ip_version": 4},
    ]
    doc = render(
        snapshot_of(raw), 7, MGMT, METADATA, services=ServiceSettings(dhcp_lease_seconds=600)
    )
    allocation = next(a for a in network(doc, PRIVATE_NET).allocations if a.port_id == VM1_PORT)
    assert [(o.name, o.value, o.ip_version) for o in allocation.dhcp_options] == [
        ("bootfile-name", "pxelinux.0", 4),
        ("23", "[2001:db8::53]", 6),
    ]
    assert doc.dhcp_lease_seconds == 600


def speaker(version: int, peers: list[str], **changes: Any) -> dict[str, Any]:
    return {
        "id": f"speaker{version}",
        "local_as": 64512,
        "ip_version": version,
        "peers": peers,
        "networks": [PUBLIC_NET],
        **changes,
    }


def peer(peer_id: str, ip: str, auth_type: str = "none") -> dict[str, Any]:
    return {"id": peer_id, "peer_ip": ip, "remote_as": 65000, "auth_type": auth_type}


def test_a_bgp_speaker_announces_ipv6_tenant_prefixes_to_its_peers() -> None:
    raw = recorded()
    raw["bgp_speakers"] = [speaker(6, ["p1", "p2"])]
    # p2's MD5 password is not shown by Neutron: it cannot be peered (logged).
    raw["bgp_peers"] = [peer("p1", "2001:db8:ff::1"), peer("p2", "2001:db8:ff::2", "md5")]
    raw["subnets"].append(
        {
            "id": "ext6",
            "network_id": PUBLIC_NET,
            "cidr": "2001:db8:ff::/64",
            "gateway_ip": "2001:db8:ff::1",
        }
    )
    bgp = rendered(raw).bgp
    assert bgp is not None
    assert bgp.local_as == 64512
    assert [(str(p.address), p.remote_as) for p in bgp.peers] == [("2001:db8:ff::1", 65000)]
    assert [str(p) for p in bgp.prefixes] == ["fd00:1::/64"]


def test_ipv4_tenant_prefixes_only_without_snat_and_floating_ips_as_host_routes() -> None:
    raw = recorded()
    raw["bgp_speakers"] = [speaker(4, ["p1"])]
    raw["bgp_peers"] = [peer("p1", "203.0.113.1")]
    snat = rendered(raw).bgp
    assert snat is not None
    assert [str(p) for p in snat.prefixes] == ["203.0.113.192/32"]
    raw["router"]["external_gateway_info"]["enable_snat"] = False
    routed = rendered(raw).bgp
    assert routed is not None
    assert [str(p) for p in routed.prefixes] == ["10.0.0.0/24", "10.0.1.0/24", "203.0.113.192/32"]
    raw["bgp_speakers"] = [speaker(4, ["p1"], advertise_floating_ip_host_routes=False)]
    assert [str(p) for p in rendered(raw).bgp.prefixes] == ["10.0.0.0/24", "10.0.1.0/24"]  # type: ignore[union-attr]
    # No speaker, or no peer it can talk to: no BGP at all.
    raw["bgp_peers"] = [peer("p1", "203.0.113.1", "md5")]
    assert rendered(raw).bgp is None
    assert rendered().bgp is None


def test_nova_instance_ports_carry_their_signed_identity_and_no_other_port_does() -> None:
    raw = recorded()
    plain = next(p for p in raw["network_ports"] if p["id"].startswith("31169011"))
    plain["device_id"] = "not-an-instance"  # a device, but not owned by compute:
    by_port = {
        a.port_id: a.instance for net in rendered(raw).internal_networks() for a in net.allocations
    }
    vm1 = by_port.pop(VM1_PORT)
    assert vm1 is not None
    assert (vm1.instance_id, vm1.project_id) == (VM1_INSTANCE, "5d1e6f0a2b3c4d5e8f9a0b1c2d3e4f50")
    assert vm1.signature.get_secret_value() == VM1_SIGNATURE
    backend_vm = by_port.pop("d28fa693-ae8b-4aeb-bff1-442242d3fc14")
    assert backend_vm is not None
    assert backend_vm.instance_id == "fb139377-3c04-41f7-aa98-c7e2658160b1"
    assert by_port == {plain["id"]: None}
    # Without a metadata service nothing is signed.
    assert all(
        a.instance is None for a in network(rendered(metadata=None), PRIVATE_NET).allocations
    )


def test_signature_is_novas_and_changes_with_the_secret() -> None:
    assert nova_signature("nova-shared-secret", VM1_INSTANCE) == VM1_SIGNATURE
    assert nova_signature("another-secret", VM1_INSTANCE) != VM1_SIGNATURE
    other = MetadataService(METADATA_URL, "another-secret")
    assert other.fingerprint() != METADATA.fingerprint()
    assert "nova-shared-secret" not in METADATA.fingerprint() + repr(METADATA)


@pytest.mark.parametrize("device_id", ["", "has spaces", "x" * 65])
def test_an_instance_id_nova_never_makes_gets_no_identity_but_the_router_renders(
    device_id: str,
) -> None:
    raw = recorded()
    next(p for p in raw["network_ports"] if p["id"] == VM1_PORT)["device_id"] = device_id
    vm1 = next(a for a in network(rendered(raw), PRIVATE_NET).allocations if a.port_id == VM1_PORT)
    assert vm1.instance is None


def test_hostname_prefers_ipv4_then_the_lowest_address() -> None:
    ips = [ipaddress.ip_address(a) for a in ("fd00::5", "10.0.0.9", "10.0.0.10")]
    assert hostname_for(ips) == "host-10-0-0-9"
    assert hostname_for([ipaddress.ip_address("fd00:1::a")]) == "host-fd00-1--a"


def test_floating_ips_only_with_a_fixed_ip_and_port_forwards_single_and_ranges() -> None:
    config = rendered()
    assert [(str(f.floating_ip), str(f.fixed_ip)) for f in config.floating_ips] == [
        ("203.0.113.192", "10.0.0.5")
    ]
    forwards = [
        (
            f.protocol,
            str(f.external_ip),
            f.external_port.first,
            f.external_port.last,
            str(f.internal_ip),
            f.internal_port.first,
            f.internal_port.last,
        )
        for f in config.port_forwards
    ]
    assert forwards == [
        ("tcp", "203.0.113.77", 2222, 2222, "10.0.0.5", 22, 22),
        ("udp", "203.0.113.77", 6000, 6009, "10.0.1.144", 5000, 5009),
    ]


def test_port_forwards_with_a_protocol_the_document_lacks_are_left_out() -> None:
    raw = recorded()
    raw["port_forwardings"][0]["protocol"] = "sctp"
    assert [f.protocol for f in rendered(raw).port_forwards] == ["udp"]


def test_extra_routes_snat_and_metadata() -> None:
    config = rendered()
    assert [(str(r.destination), str(r.nexthop)) for r in config.routes] == [
        ("192.168.100.0/24", "10.0.0.200")
    ]
    assert config.snat_enabled is True
    assert config.metadata is not None and str(config.metadata.upstream_url) == METADATA_URL
    assert rendered(metadata=None).metadata is None

    raw = recorded()
    raw["router"]["external_gateway_info"]["enable_snat"] = False
    assert rendered(raw).snat_enabled is False


def test_router_without_gateway_has_no_external_network_nor_snat() -> None:
    raw = recorded()
    raw["router"]["external_gateway_info"] = None
    raw["ports"] = [p for p in raw["ports"] if p["device_owner"] != "network:router_gateway"]
    raw["floatingips"] = []
    raw["port_forwardings"] = []
    config = rendered(raw)
    assert problems(config) == []
    assert config.network("external") is None
    assert config.snat_enabled is False
    assert "fa:16:3e:08:12:ae" not in {iface.mac for iface in config.interfaces}


def test_rendering_ignores_the_order_neutron_lists_things_in() -> None:
    raw = recorded()
    reordered = json.loads(json.dumps(raw))
    for key in ("ports", "subnets", "networks", "network_ports", "floatingips", "port_forwardings"):
        reordered[key].reverse()
    assert rendered(reordered) == rendered(raw)


def test_the_source_asks_neutron_for_its_extensions_once_per_ttl() -> None:
    from astara.drivers.router import EXTENSION_TTL, NeutronRouterSource

    class Answer:
        def __init__(self, status: int, body: dict[str, Any]) -> None:
            self.status_code, self._body, self.text = status, body, ""

        def json(self) -> dict[str, Any]:
            return self._body

    class Network:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def get(self, path: str, params: Any = None) -> Answer:
            self.paths.append(path)
            return Answer(404, {}) if path.startswith("/extensions/") else Answer(200, {})

    network, now = Network(), [0.0]
    source = NeutronRouterSource(type("Conn", (), {"network": network})(), clock=lambda: now[0])
    for _ in range(3):
        assert not source._has_extension("fwaas_v2")
    assert network.paths == ["/extensions/fwaas_v2"]
    now[0] += EXTENSION_TTL + 1
    source._has_extension("fwaas_v2")
    assert network.paths == ["/extensions/fwaas_v2"] * 2
