"""The Neutron L3 agent's way of applying the same router, for bench/apply.py.

Run by the Neutron venv's python (neutron 29, read-only), as root:
    <neutron venv>/bin/python bench/neutron_l3_peer.py SPEC.json

SPEC (written by bench/apply.py): namespace, gateway interface and address, floating IPs,
the extra floating IP of the delta, firewall rules, number of runs. The real neutron code
does the work: IptablesManager (build in memory, iptables-save, diff, iptables-restore), the
RouterInfo NAT rule methods called on a stub router, and ip_lib.IPDevice for the addresses,
with privsep in-process (client mode off), as in neutron's own unit tests. It leaves out what
a real agent adds on top (RPC, router lock, ip6tables, gratuitous ARP), which flatters it.

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

    privileged.default.set_client_mode(False)


def iptables_rule(rule: dict[str, Any]) -> str:
    parts = []
    if rule.get("source"):
        parts.append(f"-s {rule['source']}")
    if rule.get("destination"):
        parts.append(f"-d {rule['destination']}")
    if rule.get("protocol"):
        parts.append(f"-p {rule['protocol']} -m {rule['protocol']}")
        if rule.get("dport"):
            parts.append(f"--dport {rule['dport']}")
    parts.append("-j " + {"allow": "ACCEPT", "deny": "DROP"}[rule["action"]])
    return " ".join(parts)


class Router:
    """A stub ``self`` for RouterInfo's methods: the state they read, nothing more."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from neutron.agent.l3 import router_info
        from neutron.agent.linux import iptables_manager

        info = router_info.RouterInfo
        self.spec = spec
        self.stub = types.SimpleNamespace(
            iptables_manager=iptables_manager.IptablesManager(
                namespace=spec["namespace"], use_ipv6=False, binary_name="neutron-l3-agent"
            ),
            agent_conf=types.SimpleNamespace(external_ingress_mark="0x1"),
            router={"_floatingips": self.fips(spec["fips"])},
        )
        stub = self.stub
        stub.get_floating_ips = types.MethodType(info.get_floating_ips, stub)
        stub.floating_forward_rules = types.MethodType(info.floating_forward_rules, stub)
        stub._prevent_snat_for_internal_traffic_rule = types.MethodType(
            info._prevent_snat_for_internal_traffic_rule, stub
        )
        self.info = info

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
        nat, mangle, filt = manager.ipv4["nat"], manager.ipv4["mangle"], manager.ipv4["filter"]
        for chain, rule in info.external_gateway_nat_fip_rules(stub, gateway, interface):
            nat.add_rule(chain, rule)
        for chain, rule in info.external_gateway_nat_snat_rules(stub, gateway, interface):
            nat.add_rule(chain, rule)
        for chain, rule in info.external_gateway_mangle_rules(stub, interface):
            mangle.add_rule(chain, rule)
        filt.add_chain("fw")
        filt.add_rule("FORWARD", "-j $fw")
        for rule in spec["rules"]:
            filt.add_rule("fw", iptables_rule(rule))
        # Adds every floating IP's rules and applies the whole lot (save, diff, restore).
        info.process_floating_ip_nat_rules(stub)
        self.addresses()

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
