"""Pure planning of the netns provider (names, management addresses) and the provider contract."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError
from stevedore.exception import NoMatches

from astara.common.tls import CertificateAuthority
from astara.orchestrator.appliance_client import base_url
from astara.providers.base import InstanceSpec, PortSpec, ProviderError, load_provider
from astara.providers.netns import (
    IFNAMSIZ,
    InstanceRecord,
    Names,
    NetnsProvider,
    allocate_management_address,
    format_target,
    host_management_address,
    pids_naming,
)

pytestmark = pytest.mark.unit

MGMT = PortSpec(port_id="p-m", network_id="n-m", mac="02:00:00:00:00:01", kind="management")
INTERNAL = PortSpec(port_id="p-i", network_id="n-i", mac="02:00:00:00:00:02", kind="internal")
UUID = "5b1a8e2c-93a1-4c5e-b7a8-0a1f2d3c4b5e"


def link_names(names: Names, key: str) -> list[str]:
    return [
        names.network_bridge(key),
        names.port_fabric_link(key),
        names.port_instance_link(key),
        names.uplink_fabric_link(key),
        names.uplink_link(key),
        names.management_bridge,
        names.host_management_link,
        names.fabric_management_link,
    ]


@pytest.mark.parametrize("prefix", ["a", "ast", "tE", "abcdef"])
def test_link_names_fit_the_kernel_and_carry_the_prefix(prefix: str) -> None:
    names = Names(prefix)
    generated = link_names(names, UUID)
    assert all(len(name) <= IFNAMSIZ for name in generated)
    assert all(name.startswith(prefix) for name in generated)
    assert len(set(generated)) == len(generated)


def test_names_are_stable_and_distinct_per_id() -> None:
    names = Names("ast")
    assert names.network_bridge(UUID) == Names("ast").network_bridge(UUID)
    assert names.network_bridge(UUID) != names.network_bridge(UUID[:-1] + "f")
    assert names.instance_ns(UUID) == names.instance_ns(UUID)
    assert names.instance_ns("a") != names.instance_ns("b")
    assert names.instance_ns(UUID).startswith("ast-")
    assert names.instance_ns(UUID) not in (names.fabric_ns, names.uplink_ns)
    # Two providers with different prefixes never share a name.
    assert not set(link_names(names, UUID)) & set(link_names(Names("tE"), UUID))


@pytest.mark.parametrize("prefix", ["", "abcdefg", "a-b", "1ab", "a b"])
def test_prefixes_that_would_break_names_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Names(prefix)


def test_management_ports_go_to_the_management_bridge() -> None:
    names = Names("ast")
    assert names.bridge_for(MGMT) == names.management_bridge
    assert names.bridge_for(INTERNAL) == names.network_bridge("n-i")


def test_addresses_start_after_the_orchestrator_and_fill_gaps() -> None:
    subnet = ipaddress.ip_network("fdca:3ba5:a17a:acda::/64")
    assert str(host_management_address(subnet)) == "fdca:3ba5:a17a:acda::1/64"
    assert str(allocate_management_address(subnet, [])) == "fdca:3ba5:a17a:acda::2/64"
    used = [ipaddress.ip_address(f"fdca:3ba5:a17a:acda::{n}") for n in (2, 3, 5)]
    assert str(allocate_management_address(subnet, used)) == "fdca:3ba5:a17a:acda::4/64"


def test_ipv4_management_subnets_keep_the_broadcast_free_and_run_out() -> None:
    subnet = ipaddress.ip_network("100.127.0.0/29")
    used = [ipaddress.ip_address(f"100.127.0.{n}") for n in range(2, 6)]
    assert str(allocate_management_address(subnet, used)) == "100.127.0.6/29"
    with pytest.raises(ProviderError, match="no free address"):
        allocate_management_address(subnet, [*used, ipaddress.ip_address("100.127.0.6")])


def test_an_instance_needs_exactly_one_management_port() -> None:
    spec = InstanceSpec(instance_id="i", router_id="r", ports=(MGMT, INTERNAL))
    assert spec.management_port() == MGMT
    for ports in ((INTERNAL,), (MGMT, MGMT.model_copy(update={"port_id": "p-m2"}))):
        with pytest.raises(ValueError, match="exactly one management port"):
            InstanceSpec(instance_id="i", router_id="r", ports=ports).management_port()


def test_port_specs_normalise_and_check_macs_and_mtu() -> None:
    port = PortSpec(port_id="p", network_id="n", mac="02:AB:00:00:00:01", kind="external")
    assert port.mac == "02:ab:00:00:00:01"
    assert port.mtu == 1500
    with pytest.raises(ValidationError):
        PortSpec(port_id="p", network_id="n", mac="02:ab:00:00:00", kind="external")
    with pytest.raises(ValidationError):
        PortSpec(port_id="p", network_id="n", mac="02:ab:00:00:00:01", kind="internal", mtu=100)


def test_instance_records_round_trip_through_json() -> None:
    record = InstanceRecord(
        id="i",
        router_id="r",
        namespace="ast-1234",
        management_address="fdca::2/64",
        ports=[MGMT, INTERNAL],
    )
    again = InstanceRecord.model_validate_json(record.model_dump_json())
    assert again == record
    assert again.port("p-i") == INTERNAL
    assert again.port("p-x") is None


def test_providers_load_by_entry_point_name(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    provider = load_provider("netns", state_dir=tmp_path / "state", ca=ca, prefix="tE")
    assert isinstance(provider, NetnsProvider)
    assert provider.names.fabric_ns == "tE-fabric"
    with pytest.raises(NoMatches):
        load_provider("no-such-provider")


def test_client_urls_bracket_ipv6() -> None:
    assert base_url("fdca:3ba5::0002", 5000) == "https://[fdca:3ba5::2]:5000"
    assert base_url("100.127.0.2", 5000) == "https://100.127.0.2:5000"


def test_heartbeat_target_is_formatted_for_the_appliance_flag() -> None:
    assert format_target("fdca:3ba5:a17a:acda::1", 5555) == "[fdca:3ba5:a17a:acda::1]:5555"
    assert format_target("192.0.2.1", 5555) == "192.0.2.1:5555"


def test_processes_are_found_by_a_path_in_their_command_line() -> None:
    marker = f"/tmp/tJ-{uuid.uuid4().hex}/"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", f"--state={marker}appliance"]
    )
    try:
        # Until the child has exec'd, its command line is still ours.
        deadline = time.monotonic() + 5
        while not pids_naming(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pids_naming(marker) == [child.pid]
        assert pids_naming(f"/tmp/tJ-{uuid.uuid4().hex}/") == []
    finally:
        child.kill()
        child.wait()
    assert pids_naming(marker) == []
