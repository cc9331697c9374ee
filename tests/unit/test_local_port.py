"""The orchestrator host's management port: planning, and convergence through a no-op driver.

Neutron here is an in-memory stand-in that keeps ports the way Neutron answers them (the real
one is proven in tests/nova/test_local_port.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from oslo_config import cfg

from astara.orchestrator import local_port
from astara.orchestrator.config import register_opts
from astara.orchestrator.local_port import (
    DEVICE_OWNER,
    LocalPort,
    LocalPortError,
    ManagementSettings,
    NoopInterfaceDriver,
    Observed,
    Step,
    device_id,
    ensure_local_port,
    external_ids,
    plan,
    remove_local_port,
)

pytestmark = pytest.mark.unit

NET, SUBNET, OTHER_NET = "net-mgmt", "sub-mgmt", "net-old"
DESIRED = LocalPort("p1", "astara-mgmt", "fa:16:3e:00:00:01", ("fd00::5/64",), 1450)


def _observed(**changes: Any) -> Observed:
    good = Observed(
        bridge="br-int",
        external_ids=external_ids("p1", "fa:16:3e:00:00:01"),
        mac="fa:16:3e:00:00:01",
        mtu=1450,
        up=True,
        addresses=frozenset({"fd00::5/64"}),
    )
    return replace(good, **changes)


def test_nothing_there_plugs_configures_and_brings_it_up() -> None:
    assert plan(DESIRED, "br-int", None) == [
        Step("plug"),
        Step("set_mac", "fa:16:3e:00:00:01"),
        Step("set_mtu", "1450"),
        Step("add_address", "fd00::5/64"),
        Step("set_up"),
    ]


def test_an_interface_as_wanted_needs_nothing() -> None:
    assert plan(DESIRED, "br-int", _observed()) == []


def test_a_wrong_mac_or_address_is_corrected_and_nothing_else() -> None:
    wrong = _observed(mac="02:00:00:00:00:09", addresses=frozenset({"fd00::9/64"}))
    assert plan(DESIRED, "br-int", wrong) == [
        Step("set_mac", "fa:16:3e:00:00:01"),
        Step("remove_address", "fd00::9/64"),
        Step("add_address", "fd00::5/64"),
    ]


def test_stale_external_ids_are_set_again() -> None:
    stale = _observed(external_ids=external_ids("p0", "fa:16:3e:00:00:01"))
    assert plan(DESIRED, "br-int", stale) == [Step("plug")]


def test_an_interface_on_another_bridge_is_moved() -> None:
    assert plan(DESIRED, "br-int", _observed(bridge="br-ex"))[:2] == [Step("unplug"), Step("plug")]


@dataclass
class _Port:
    id: str
    network_id: str
    device_id: str
    device_owner: str
    binding_host_id: str
    mac_address: str
    fixed_ips: list[dict[str, str]]
    created_at: str
    status: str = "DOWN"
    binding_vif_type: str = "unbound"


@dataclass
class _Neutron:
    """Just enough of openstacksdk's network proxy; the L2 agent wires a port at first look."""

    ports_: dict[str, _Port] = field(default_factory=dict)
    wired_after: int = 1
    calls: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def ports(self, **query: str) -> list[_Port]:
        return [
            p for p in self.ports_.values() if all(getattr(p, k) == v for k, v in query.items())
        ]

    def create_port(self, **attrs: Any) -> _Port:
        self.calls.append("create")
        n = next(self._ids)
        port = _Port(
            id=f"port-{n}",
            network_id=attrs["network_id"],
            device_id=attrs["device_id"],
            device_owner=attrs["device_owner"],
            binding_host_id=attrs["binding_host_id"],
            mac_address=f"FA:16:3E:00:00:{n:02x}",
            fixed_ips=[{"subnet_id": SUBNET, "ip_address": f"fd00::{n + 10:x}"}],
            created_at=f"2026-01-01T00:00:{n:02d}",
        )
        self.ports_[port.id] = port
        return port

    def update_port(self, port_id: str, **changes: Any) -> _Port:
        self.calls.append("update " + ",".join(sorted(changes)))
        port = self.ports_[port_id]
        for key, value in changes.items():
            setattr(port, key, value)
        return port

    def delete_port(self, port_id: str, ignore_missing: bool = True) -> None:
        self.calls.append("delete " + port_id)
        self.ports_.pop(port_id, None)

    def get_port(self, port_id: str) -> _Port:
        port = self.ports_[port_id]
        self.wired_after -= 1
        if self.wired_after <= 0:
            port.status, port.binding_vif_type = "ACTIVE", "ovs"
        return port

    def get_subnet(self, subnet_id: str) -> Any:
        return type("Subnet", (), {"cidr": "fd00::/64"})()

    def get_network(self, network_id: str) -> Any:
        return type("Network", (), {"mtu": 1450})()


def _settings(**changes: Any) -> ManagementSettings:
    good = ManagementSettings(NET, SUBNET, "host-a", "br-int", "astara-mgmt", 5.0)
    return replace(good, **changes)


def _no_sleep(_: float) -> None:
    return None


def test_first_run_creates_a_bound_port_and_a_matching_interface() -> None:
    neutron, driver = _Neutron(), NoopInterfaceDriver()
    port = ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep)
    created = neutron.ports_[port.port_id]
    assert (created.device_id, created.device_owner) == (device_id("host-a"), DEVICE_OWNER)
    assert created.binding_host_id == "host-a"
    assert port.mac == created.mac_address.lower()
    assert port.addresses == ("fd00::a/64",)
    iface = driver.interfaces["astara-mgmt"]
    assert iface.external_ids == external_ids(port.port_id, port.mac)
    assert (iface.mac, iface.mtu, iface.up, iface.addresses) == (
        port.mac,
        1450,
        True,
        frozenset(port.addresses),
    )


def test_second_run_changes_nothing() -> None:
    neutron, driver = _Neutron(), NoopInterfaceDriver()
    first = ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep)
    before, calls = dict(driver.interfaces), list(neutron.calls)
    assert ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep) == first
    assert driver.interfaces == before
    assert neutron.calls == calls


def test_the_port_is_found_by_device_id_not_by_name() -> None:
    neutron, driver = _Neutron(), NoopInterfaceDriver()
    first = ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep)
    neutron.ports_[first.port_id].__dict__["name"] = "renamed by someone"
    assert ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep).port_id == first.port_id


def test_a_port_bound_elsewhere_is_bound_here_and_extras_are_deleted() -> None:
    neutron, driver = _Neutron(), NoopInterfaceDriver()
    first = ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep)
    neutron.ports_[first.port_id].binding_host_id = "host-b"
    old = neutron.create_port(
        network_id=OTHER_NET,
        device_id=device_id("host-a"),
        device_owner=DEVICE_OWNER,
        binding_host_id="host-a",
    )
    again = ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep)
    assert again.port_id == first.port_id
    assert neutron.ports_[first.port_id].binding_host_id == "host-a"
    assert old.id not in neutron.ports_


def test_a_port_never_active_is_an_error_that_says_so() -> None:
    neutron = _Neutron(wired_after=10**6)
    clock = itertools.count(0.0, 1.0)
    with pytest.raises(LocalPortError, match="DOWN, not ACTIVE, after 5 s"):
        ensure_local_port(
            neutron,
            NoopInterfaceDriver(),
            _settings(),
            sleep=_no_sleep,
            clock=lambda: float(next(clock)),
        )


def test_remove_takes_the_interface_and_the_port_away() -> None:
    neutron, driver = _Neutron(), NoopInterfaceDriver()
    ensure_local_port(neutron, driver, _settings(), sleep=_no_sleep)
    remove_local_port(neutron, driver, _settings())
    assert driver.interfaces == {}
    assert neutron.ports_ == {}


def test_settings_come_from_the_management_options() -> None:
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf([], default_config_files=[])
    with pytest.raises(LocalPortError, match="network_id"):
        ManagementSettings.from_conf(conf)
    conf.set_override("network_id", NET, group="management")
    settings = ManagementSettings.from_conf(conf)
    assert (settings.integration_bridge, settings.interface_name) == ("br-int", "astara-mgmt")
    assert isinstance(local_port.interface_driver(conf.management.interface_driver), object)
