"""BGP with real bird2 on both sides: the appliance announces its tenant prefixes to an upstream
peer (a second bird in a namespace), and withdraws one when its interface goes.

    tG-p (upstream, AS 65000: 172.30.9.1, 2001:db8:9::1) --- tG-r [ext | int] --- tG-c
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astara.appliance.bird import BirdSubsystem
from astara.appliance.netlink import LinksSubsystem, resolve_links
from astara.appliance.nftables import NftablesSubsystem
from astara.testing.netns import Namespace, Topology, inside, wait_for
from astara.wire.document import ApplianceConfig, problems

pytestmark = pytest.mark.functional

EXT_MAC, INT_MAC = "02:0e:00:00:00:01", "02:0e:00:00:00:02"
UPSTREAM_CONF = """router id 172.30.9.1;
protocol device {}
protocol bgp router4 {
    local as 65000; neighbor 172.30.9.2 as 64512; connect retry time 5;
    ipv4 { import all; export none; };
}
protocol bgp router6 {
    local as 65000; neighbor 2001:db8:9::2 as 64512; connect retry time 5;
    ipv6 { import all; export none; };
}
"""


def document(generation: int = 1, with_internal: bool = True) -> ApplianceConfig:
    internal = {
        "id": "int",
        "kind": "internal",
        "interface_mac": INT_MAC,
        "addresses": ["10.39.1.1/24", "2001:db8:39:1::1/64"],
        "subnets": [
            {"id": "i4", "cidr": "10.39.1.0/24"},
            {"id": "i6", "cidr": "2001:db8:39:1::/64"},
        ],
    }
    prefixes = ["10.39.1.0/24", "2001:db8:39:1::/64"] if with_internal else []
    doc: dict[str, Any] = {
        "generation": generation,
        "router_id": "router-g",
        "hostname": "router-g",
        "interfaces": [{"mac": EXT_MAC}, {"mac": INT_MAC}],
        "networks": [
            {
                "id": "ext",
                "kind": "external",
                "interface_mac": EXT_MAC,
                "addresses": ["172.30.9.2/24", "2001:db8:9::2/64"],
                "subnets": [
                    {"id": "e4", "cidr": "172.30.9.0/24", "gateway_ip": "172.30.9.1"},
                    {"id": "e6", "cidr": "2001:db8:9::/64", "gateway_ip": "2001:db8:9::1"},
                ],
            },
            *([internal] if with_internal else []),
        ],
        "firewall": {"default_action": "deny"},
        "bgp": {
            "local_as": 64512,
            "peers": [
                {"address": "172.30.9.1", "remote_as": 65000},
                {"address": "2001:db8:9::1", "remote_as": 65000},
            ],
            "prefixes": prefixes,
        },
    }
    return ApplianceConfig.model_validate(doc)


@dataclass
class Bed:
    upstream: Namespace
    control: Path
    router: Namespace
    links: dict[str, str]
    subsystems: tuple[Any, ...]
    current: ApplianceConfig | None = None

    def apply(self, config: ApplianceConfig | None) -> None:
        with inside(self.router.name):
            for sub in self.subsystems:
                sub.apply(config, self.current, self.links)
        self.current = config

    def learned(self) -> str:
        done = self.upstream.run(["birdc", "-s", str(self.control), "show", "route"], check=False)
        return done.stdout


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    state = Path(tempfile.mkdtemp(prefix="tG-state-"))
    with Topology("tG") as topo:
        router, upstream, client = (topo.namespace(f"tG-{n}") for n in ("r", "p", "c"))
        topo.veth(router, "tGr-e", upstream, "tGp-e", left_mac=EXT_MAC)
        topo.veth(router, "tGr-1", client, "tGc", left_mac=INT_MAC)
        for cidr in ("172.30.9.1/24", "2001:db8:9::1/64"):
            upstream.run(["ip", "addr", "add", cidr, "dev", "tGp-e", "nodad"])
        (state / "upstream.conf").write_text(UPSTREAM_CONF)
        control = state / "upstream.ctl"
        topo.spawn(upstream, ["bird", "-f", "-c", str(state / "upstream.conf"), "-s", str(control)])
        with inside(router.name):
            links = resolve_links([EXT_MAC, INT_MAC])
            subsystems = (LinksSubsystem(), NftablesSubsystem(), BirdSubsystem(state / "bgp"))
        bed = Bed(upstream, control, router, links, subsystems)
        try:
            yield bed
        finally:
            try:
                bed.apply(None)
            finally:
                subsystems[0].close()
    shutil.rmtree(state, ignore_errors=True)


def test_the_peer_learns_the_tenant_prefixes_and_the_withdrawal_of_one_that_goes(
    bed: Bed,
) -> None:
    first = document()
    assert problems(first) == []
    bed.apply(first)

    def learned_both() -> bool:
        routes = bed.learned()
        return "10.39.1.0/24" in routes and "2001:db8:39:1::/64" in routes

    wait_for(learned_both, 60, "the upstream peer to learn both tenant prefixes")
    routes = bed.learned()
    # Next hop: the router's own address on each session; only what it announces.
    assert "via 172.30.9.2" in routes and "via 2001:db8:9::2" in routes
    assert "172.30.9.0/24" not in routes  # nothing else leaks (no direct or kernel routes)

    bed.apply(document(generation=2, with_internal=False))
    wait_for(
        lambda: "2001:db8:39:1::/64" not in bed.learned() and "10.39.1.0/24" not in bed.learned(),
        30,
        "the peer to drop the withdrawn prefixes",
    )
    # The sessions stayed up through the reconfiguration (withdrawn, not torn down).
    status = bed.upstream.run(["birdc", "-s", str(bed.control), "show", "protocols"]).stdout
    assert status.count("Established") == 2, status
