"""The Neutron L3 agent's way of applying the same router, for bench/apply.py.

Run by the Neutron venv's python (neutron 29, read-only), as root:
    <neutron venv>/bin/python bench/neutron_l3_peer.py SPEC.json

SPEC (written by bench/apply.py): namespace, gateway interface and address, floating IPs,
the extra floating IP of the delta, the firewall group's port and its ingress rules in
neutron-fwaas's API shape, number of runs. The real code does the work: IptablesManager
(build in memory, iptables-save, diff, iptables-restore), the RouterInfo NAT rule methods
called on a stub router, ip_lib.IPDevice for the addresses, and neutron-fwaas 25's L3
agent driver (IptablesFwaasDriver.create_firewall_group: its chains, its jump rules on the
port's qr- interface, its own apply, then its conntrack cleanup; its rule text put in
iptables-save's order, see Router.__init__), with privsep in-process
(client mode off), as in neutron's own unit tests. It leaves out what a real agent adds on
top (RPC, router lock, ip6tables, gratuitous ARP), which flatters it.

Prints progress to stderr and one JSON line to stdout: per-run full and delta seconds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

from oslo_concurrency import lockutils
from oslo_config import cfg

BINARY_NAME = "neutron-l3-agent"


def configure(lock_dir: str) -> None:
    from neutron.conf.agent import common as agent_conf

    cfg.CONF([], project="neutron")
    agent_conf.register_root_helper(cfg.CONF)
    agent_conf.register_agent_state_opts_helper(cfg.CONF)
    agent_conf.register_interface_driver_opts_helper(cfg.CONF)
    agent_conf.register_iptables_opts(cfg.CONF)
    agent_conf.register_process_monitor_opts(cfg.CONF)
    lockutils.set_defaults(lock_dir)
    from neutron import privileged
    from neutron.agent.linux import iptables_manager

    # The wrap name of every chain: the agent's, not this script's (neutron-fwaas reads the
    # module's name when it writes its jumps).
    iptables_manager.binary_name = BINARY_NAME

    # Registers neutron-fwaas's agent options ([fwaas] conntrack_driver, its default).
    from neutron_fwaas.services.firewall.service_drivers.agents import firewall_agent_api  # noqa: F401

    privileged.default.set_client_mode(False)


class RouterStub(types.SimpleNamespace):
    # neutron-fwaas keeps the routers it applies to in a set.
    __hash__ = object.__hash__


class Router:
    """A stub ``self`` for RouterInfo's methods: the state they read, nothing more."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from neutron.agent.l3 import router_info
        from neutron.agent.linux import iptables_manager

        info = router_info.RouterInfo
        self.spec = spec
        self.stub = RouterStub(
            iptables_manager=iptables_manager.IptablesManager(
                namespace=spec["namespace"], use_ipv6=False, binary_name=BINARY_NAME
            ),
            agent_conf=types.SimpleNamespace(external_ingress_mark="0x1"),
            router={"_floatingips": self.fips(spec["fips"]), "distributed": False},
            ns_name=spec["namespace"],
        )
        stub = self.stub
        stub.get_floating_ips = types.MethodType(info.get_floating_ips, stub)
        stub.floating_forward_rules = types.MethodType(info.floating_forward_rules, stub)
        stub._prevent_snat_for_internal_traffic_rule = types.MethodType(
            info._prevent_snat_for_internal_traffic_rule, stub
        )
        self.info = info
        from neutron_fwaas.services.firewall.service_drivers.agents.drivers.linux import (
            iptables_fwaas_v2,
        )

        class Driver(iptables_fwaas_v2.IptablesFwaasDriver):
            """neutron-fwaas's driver, its rules written in the order iptables-save prints
            them (-s -d -p -m --sport --dport -j). As shipped it writes -p first; iptables 1.8.9
            prints it after the addresses, so IptablesManager's next apply (the delta's) finds
            every such rule changed and spends minutes in difflib (more than 15 with 5,000
            rules, measured here, unfinished). Patched, the peer is the faster for it."""

            def _convert_fwaas_to_iptables_rule(self, rule: dict[str, Any]) -> str:
                protocol = rule.get("protocol")
                if protocol == "icmp" and rule.get("ip_version") == 6:
                    protocol = "ipv6-icmp"
                args = [*self._ip_prefix_arg("s", rule.get("source_ip_address"))]
                args += self._ip_prefix_arg("d", rule.get("destination_ip_address"))
                args += ["-p", protocol] if protocol else []
                if rule.get("source_port") or rule.get("destination_port"):
                    args += self._match_arg(protocol)
                args += self._port_arg("sport", protocol, rule.get("source_port"))
                args += self._port_arg("dport", protocol, rule.get("destination_port"))
                action = iptables_fwaas_v2.FWAAS_TO_IPTABLE_ACTION_MAP[rule["action"]]
                return " ".join([*args, *self._action_arg(action)])

        self.firewall = Driver()

    @staticmethod
    def fips(pairs: list[list[str]]) -> list[dict[str, str]]:
        return [
            {"id": f"fip-{n}", "floating_ip_address": f, "fixed_ip_address": x, "status": "DOWN"}
            for n, (f, x) in enumerate(pairs)
        ]

    def full(self) -> None:
        stub, info, spec = self.stub, self.info, self.spec
        manager = stub.iptables_manager
        gateway, interface = spec["gateway_ip"], spec["gateway_interface"]
        nat, mangle = manager.ipv4["nat"], manager.ipv4["mangle"]
        for chain, rule in info.external_gateway_nat_fip_rules(stub, gateway, interface):
            nat.add_rule(chain, rule)
        for chain, rule in info.external_gateway_nat_snat_rules(stub, gateway, interface):
            nat.add_rule(chain, rule)
        for chain, rule in info.external_gateway_mangle_rules(stub, interface):
            mangle.add_rule(chain, rule)
        # Adds every floating IP's rules and applies the whole lot (save, diff, restore).
        info.process_floating_ip_nat_rules(stub)
        self.addresses()
        # The firewall agent extension's turn: the group on the inside port, applied on its own.
        self.firewall.create_firewall_group(
            "legacy",
            [(stub, [spec["firewall_port"]])],
            {
                "id": "bench",
                "project_id": "bench",
                "admin_state_up": True,
                "ingress_rule_list": spec["rules"],
                "egress_rule_list": [],
            },
        )

    def delta(self) -> None:
        self.stub.router["_floatingips"] = self.fips([*self.spec["fips"], self.spec["delta_fip"]])
        self.info.process_floating_ip_nat_rules(self.stub)
        self.addresses()

    def addresses(self) -> None:
        """The address half of RouterInfo.process_floating_ip_addresses."""
        from neutron.agent.linux import ip_lib

        device = ip_lib.IPDevice(self.spec["gateway_interface"], namespace=self.spec["namespace"])
        existing = {addr["cidr"] for addr in device.addr.list()}
        for fip in self.stub.get_floating_ips():
            cidr = f"{fip['floating_ip_address']}/32"
            if cidr not in existing:
                device.addr.add(cidr)


def reset(spec: dict[str, Any]) -> None:
    """Back to a bare router namespace (not timed)."""
    ns = ["ip", "netns", "exec", spec["namespace"]]
    for table in ("filter", "nat", "mangle", "raw"):
        subprocess.run([*ns, "iptables", "-t", table, "-F"], check=True)
        subprocess.run([*ns, "iptables", "-t", table, "-X"], check=True)
    interface = spec["gateway_interface"]
    subprocess.run([*ns, "ip", "addr", "flush", "dev", interface], check=True)
    subprocess.run([*ns, "ip", "addr", "add", spec["gateway_cidr"], "dev", interface], check=True)


def main() -> None:
    with open(sys.argv[1]) as source:
        spec = json.load(source)
    with tempfile.TemporaryDirectory(prefix="tA-peer-") as locks:
        configure(locks)
        fulls, deltas = [], []
        for run in range(spec["runs"]):
            reset(spec)
            router = Router(spec)
            start = time.perf_counter()
            router.full()
            middle = time.perf_counter()
            router.delta()
            end = time.perf_counter()
            fulls.append(middle - start)
            deltas.append(end - middle)
            print(
                f"peer run {run + 1}: full {fulls[-1]:.2f} s, delta {deltas[-1] * 1000:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
        reset(spec)
    result = {
        "full": fulls,
        "delta": deltas,
        "full_median": statistics.median(fulls),
        "delta_median": statistics.median(deltas),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
