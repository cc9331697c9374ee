"""Firewall groups end to end: neutron-fwaas 25's API, served by Astara's FWaaS driver in the
real Neutron, enforced by the router's appliance on real connections from outside the cloud
to a VM's floating IP; the group's status and rule counters come back."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest

from astara.testing.chaos import eventually, plugin_cloud
from astara.testing.cloud import CloudInABox
from astara.testing.conversation import conversation
from astara.testing.netns import Namespace, TopologyError
from astara.testing.neutron_objects import external_network, tenant_network

pytestmark = pytest.mark.e2e

STATE = Path("/var/lib/astara/e2e-firewall")
ECHO = [sys.executable, "-m", "astara.testing.echo"]
UPLINK_IP = "172.24.40.1"
OPEN, CLOSED, REJECTED = 7001, 7002, 7003


@dataclass
class World:
    cloud: CloudInABox
    sdk: openstack.connection.Connection
    project: str
    uplink: Namespace
    router: Any
    interface_port: str  # the router's port on the VM's network
    vm_port: str
    fip: str

    def answers(self, port: int) -> bool:
        """Whether vm-a answers on ``port`` through its floating IP, from outside."""
        try:
            self.uplink.run([*ECHO, "--ask", self.fip, "--port", str(port)], timeout=10)
        except TopologyError:
            return False
        return True

    def group_rules(self, group_id: str, direction: str) -> list[str] | None:
        """The rule ids the appliance applies for a group, None while it has no such group."""
        appliance = self.cloud.appliance()
        try:
            config = appliance.get_config()
        finally:
            appliance.close()
        for group in config.firewall.groups if config else []:
            if group.id == group_id:
                return [rule.id or "" for rule in getattr(group, direction)]
        return None


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with plugin_cloud(STATE, "astara_neutron_fw", "atf") as (cloud, sdk):
        project = "fw" + str(int(time.time()))
        net, subnet = tenant_network(sdk, project, "a", "10.41.0.0/24")
        ext = external_network(sdk, project, "ext", "172.24.40.0/24", UPLINK_IP, "fw-public")
        uplink = cloud.uplink(ext.id, f"{UPLINK_IP}/24")
        router = sdk.network.create_router(
            name="fw", project_id=project, external_gateway_info={"network_id": ext.id}
        )
        sdk.network.add_interface_to_router(router, subnet=subnet.id)
        port = sdk.network.create_port(network_id=net.id, project_id=project, name="vm-a")
        vm = cloud.workload(net.id, port.mac_address)
        eventually(lambda: cloud.dhcp(vm, timeout=3), 90, "a DHCP lease for vm-a")
        for number in (OPEN, CLOSED, REJECTED):
            cloud.spawn(vm.namespace, [*ECHO, "--name", "vm-a", "--port", str(number), "--echo"])
        fip = sdk.network.create_ip(floating_network_id=ext.id, port_id=port.id, project_id=project)
        (interface,) = sdk.network.ports(device_id=router.id, network_id=net.id)
        world = World(
            cloud, sdk, project, uplink, router, interface.id, port.id, fip.floating_ip_address
        )
        for number in (OPEN, CLOSED, REJECTED):
            eventually(lambda n=number: world.answers(n), 60, f"port {number} before any group")
        yield world


def release(world: World, group: Any) -> None:
    """Take the group off its port and delete it (fwaas refuses both while it is pending)."""
    sdk = world.sdk

    def settled() -> bool:
        return not sdk.network.get_firewall_group(group.id).status.startswith("PENDING")

    eventually(settled, 30, "the group settled")
    sdk.network.update_firewall_group(group, ports=[])
    sdk.network.delete_firewall_group(group)


def rule(world: World, name: str, **fields: Any) -> Any:
    return world.sdk.network.create_firewall_rule(name=name, project_id=world.project, **fields)


def test_a_group_lets_the_allowed_port_through_and_refuses_the_others(world: World) -> None:
    sdk = world.sdk
    allow = rule(world, "open", protocol="tcp", destination_port=str(OPEN), action="allow")
    reject = rule(
        world, "rejected", protocol="tcp", destination_port=str(REJECTED), action="reject"
    )
    ingress = sdk.network.create_firewall_policy(
        name="in", project_id=world.project, firewall_rules=[allow.id, reject.id]
    )
    everything = rule(world, "all", action="allow")
    egress = sdk.network.create_firewall_policy(
        name="out", project_id=world.project, firewall_rules=[everything.id]
    )
    # Astara enforces groups on its routers' interfaces, not on VM ports (fwaas's own 409).
    vm_port = sdk.network.create_port(
        network_id=sdk.network.get_port(world.vm_port).network_id,
        project_id=world.project,
        device_owner="compute:nova",
    )
    with pytest.raises(openstack.exceptions.ConflictException, match="firewall driver 'astara'"):
        sdk.network.create_firewall_group(name="vm", project_id=world.project, ports=[vm_port.id])
    sdk.network.delete_port(vm_port)
    group = sdk.network.create_firewall_group(
        name="web",
        project_id=world.project,
        ports=[world.interface_port],
        ingress_firewall_policy_id=ingress.id,
        egress_firewall_policy_id=egress.id,
    )
    try:
        eventually(
            lambda: world.group_rules(group.id, "ingress") == [allow.id, reject.id],
            30,
            "the group on the appliance",
        )
        assert world.answers(OPEN)
        assert not world.answers(REJECTED)  # refused at once (a TCP reset)
        assert not world.answers(CLOSED)  # no rule: the group's default drops it
        eventually(
            lambda: sdk.network.get_firewall_group(group.id).status == "ACTIVE", 30, "ACTIVE"
        )

        appliance = world.cloud.appliance()
        try:
            counters = {
                (c["chain"], c["rule"]): c["packets"] for c in appliance.counters()["rules"]
            }
        finally:
            appliance.close()
        assert counters[(f"fwg_{group.id}_ingress", allow.id)] >= 1
        assert counters[(f"fwg_{group.id}_ingress", reject.id)] >= 1
        assert counters[(f"fwg_{group.id}_ingress", "default drop")] >= 1
        sdk.network.update_firewall_group(group, ports=[])
        eventually(lambda: world.answers(CLOSED), 30, "the port open again without the group")
        assert sdk.network.get_firewall_group(group.id).status == "INACTIVE"
    finally:
        release(world, group)


def test_an_established_connection_survives_rule_changes(world: World) -> None:
    sdk = world.sdk
    allow = rule(world, "open", protocol="tcp", destination_port=str(OPEN), action="allow")
    ingress = sdk.network.create_firewall_policy(
        name="in2", project_id=world.project, firewall_rules=[allow.id]
    )
    group = sdk.network.create_firewall_group(
        name="talk",
        project_id=world.project,
        ports=[world.interface_port],
        ingress_firewall_policy_id=ingress.id,
    )
    try:
        eventually(lambda: world.group_rules(group.id, "ingress") == [allow.id], 30, "group")
        # fwaas takes no change to a group's policies while the group is pending.
        eventually(lambda: sdk.network.get_firewall_group(group.id).status == "ACTIVE", 30, "up")
        with conversation(world.uplink, world.fip, OPEN) as talk:
            assert talk.greeting.split()[0] == "vm-a"
            assert talk.echo("before") == "before"
            # An unrelated rule, inserted first: the whole rule set is replaced on the
            # appliance, and the connection, already allowed, lives on.
            udp = rule(world, "udp", protocol="udp", destination_port="9999", action="deny")
            sdk.network.insert_rule_into_policy(ingress.id, udp.id, insert_before=allow.id)
            eventually(
                lambda: world.group_rules(group.id, "ingress") == [udp.id, allow.id],
                30,
                "the inserted rule on the appliance",
            )
            assert talk.echo("after") == "after"
            # The rule that let this connection in now allows another port: new connections
            # to this one are dropped, the established one carries on. The edit is forwarded
            # as an event of the router, so it is applied at once (not at the next resync).
            sdk.network.update_firewall_rule(allow, destination_port=str(CLOSED))
            eventually(lambda: world.answers(CLOSED), 10, "port 7002 allowed by the edited rule")
            assert not world.answers(OPEN)
            assert talk.echo("still") == "still"
    finally:
        release(world, group)
