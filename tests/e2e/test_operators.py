"""The operators' control surface end to end: ``openstack astara ...`` against a running
orchestrator (real Neutron with Astara's plugin, RabbitMQ, netns appliances) whose management
API checks real Keystone tokens and is found in Keystone's catalog.

Every command runs as an operator would type it: the real ``openstack`` client, the plugin,
the management API, as the demo project's admin (member and reader for the policy checks).
The steps build on each other and run in file order on two routers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest

from astara.orchestrator.appliance_client import ApplianceClient
from astara.testing.chaos import eventually, fresh_state
from astara.testing.cloud import CloudInABox
from astara.testing.keystone_access import KeystoneAccess
from astara.testing.neutron_bed import NeutronTestbed, connect, free_port
from astara.testing.neutron_objects import tenant_network

pytestmark = [pytest.mark.e2e, pytest.mark.keystone]

PREFIX = "aop"
STATE = Path("/var/lib/astara/e2e-operators")
NEUTRON_DATABASE = "astara_neutron_ops"
OPENSTACK = Path(sys.executable).with_name("openstack")


@dataclass
class World:
    cloud: CloudInABox
    sdk: openstack.connection.Connection
    clouds_yaml: Path
    project: str  # the demo project's id (Keystone's): its reader may read its routers
    routers: dict[str, str] = field(default_factory=dict)  # name -> id
    subnets: dict[str, Any] = field(default_factory=dict)

    def astara(
        self, *argv: str, check: bool = True, cloud: str = "demo-admin"
    ) -> subprocess.CompletedProcess[str]:
        """``openstack astara ...`` as an operator (or ``cloud``'s user) runs it."""
        env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(self.clouds_yaml)}
        done = subprocess.run(
            [str(OPENSTACK), "--os-cloud", cloud, "astara", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"openstack astara {' '.join(argv)}: {done.stderr}")
        return done

    def json(self, *argv: str) -> Any:
        return json.loads(self.astara(*argv, "-f", "json").stdout)

    def router(self, name: str) -> dict[str, Any]:
        shown: dict[str, Any] = self.json("router", "show", self.routers[name])
        return shown

    def active_instance(self, name: str) -> str:
        """The router's instance once the router is ACTIVE and its instance alive."""

        def ready() -> str | None:
            shown = self.router(name)
            ok = shown["State"] == "active" and shown["Health"] == "alive"
            return str(shown["Instance"]) if ok else None

        return eventually(ready, 90, f"router {name} active with a live instance")

    def appliance(self, instance_id: str) -> ApplianceClient:
        (found,) = [i for i in self.cloud.provider().list() if i.id == instance_id]
        creds = STATE / "orchestrator"
        return ApplianceClient(
            found.management_address,
            ca=creds / "ca" / "ca.pem",
            cert=creds / "orchestrator-client.pem",
            key=creds / "orchestrator-client.pem",
        )

    def kill(self, instance_id: str) -> None:
        ns = self.cloud.provider().names.instance_ns(instance_id)
        os.kill(int((STATE / "instances" / ns / "appliance.pid").read_text()), signal.SIGKILL)


@pytest.fixture(scope="module")
def world(keystone: KeystoneAccess) -> Iterator[World]:
    bed = NeutronTestbed(state_dir=STATE / "neutron", database=NEUTRON_DATABASE, astara_plugin=True)
    cloud = CloudInABox(
        state_dir=STATE,
        bed=bed,
        prefix=PREFIX,
        # No periodic reconcile during the module: only an explicit poll re-reads a router.
        resync_interval=3600.0,
        # Kills here are one at a time and on purpose; the breaker's own logic has unit tests.
        health={"breaker_min_deaths": "1000"},
        keystone_authtoken=keystone.authtoken(),
        metrics_port=free_port(),
    )
    fresh_state(cloud)
    endpoint = cloud.up()
    keystone.register_api(cloud.api_url)
    clouds_yaml = STATE / "clouds.yaml"
    keystone.clouds_yaml_for_clients(clouds_yaml)
    try:
        yield World(cloud, connect(endpoint.url), clouds_yaml, keystone.project_id("demo-admin"))
    finally:
        cloud.down()


def test_routers_are_listed_with_their_state_and_health(world: World) -> None:
    sdk = world.sdk
    for n, name in enumerate(("a", "b")):
        _, subnet = tenant_network(sdk, world.project, name, f"10.{41 + n}.0.0/24")
        router = sdk.network.create_router(name=name, project_id=world.project)
        sdk.network.add_interface_to_router(router, subnet=subnet.id)
        world.routers[name] = router.id
        world.subnets[name] = subnet
    for name in world.routers:
        world.active_instance(name)
    listed = world.json("router", "list", "--project", world.project)
    assert {r["ID"]: (r["State"], r["Health"]) for r in listed} == {
        rid: ("active", "alive") for rid in world.routers.values()
    }
    table = world.astara("router", "list").stdout
    assert world.routers["a"] in table and "Last Error" in table
    shown = world.router("a")
    assert shown["Desired"] == shown["Acknowledged"]
    assert shown["Worker"]["pid"] is not None
    instances = world.json("instance", "list", "--router", world.routers["a"])
    assert [i["ID"] for i in instances] == [shown["Instance"]]
    workers = world.json("worker", "list")
    assert len(workers) == 2 and all(w["Alive"] and w["PID"] for w in workers)
    breaker = world.json("breaker", "show")
    assert (breaker["Open"], breaker["Watched Instances"]) == (False, 2)
    refused = world.astara("breaker", "reset", check=False)
    assert refused.returncode != 0 and "the circuit breaker is closed" in refused.stderr


def test_rebuild_really_replaces_the_appliance(world: World) -> None:
    old = world.active_instance("a")
    world.astara("router", "rebuild", world.routers["a"], "--image", "appliance-v2")
    new = eventually(
        lambda: (i := world.active_instance("a")) != old and i, 90, "a new instance, active"
    )
    assert [i.id for i in world.cloud.provider().list() if i.router_id == world.routers["a"]] == [
        new
    ]
    shown = world.router("a")
    assert shown["Image"] == "appliance-v2"
    assert any(e["message"].startswith("rebuild requested") for e in shown["Events"])


def test_poll_reconciles_a_change_made_behind_neutrons_back(world: World) -> None:
    instance = world.active_instance("a")
    subnet = world.subnets["a"]
    nexthop = subnet.cidr.replace("0/24", "99")
    # Straight into Neutron's database: no notification, no event; only a read sees it.
    values = f"('192.0.2.0/24', '{nexthop}', '{world.routers['a']}')"
    insert = f"INSERT INTO routerroutes (destination, nexthop, router_id) VALUES {values}"  # noqa: S608
    subprocess.run(["mariadb", NEUTRON_DATABASE, "-e", insert], check=True)

    def routes() -> set[str]:
        with world.appliance(instance) as client:
            config = client.get_config()
        assert config is not None
        return {str(r.destination) for r in config.routes}

    assert "192.0.2.0/24" not in routes()
    world.astara("router", "poll", world.routers["a"])
    eventually(lambda: "192.0.2.0/24" in routes(), 15, "the route applied after the poll")


def test_unmanage_stops_every_action_including_replacing_a_killed_appliance(
    world: World,
) -> None:
    kept = world.active_instance("b")
    replaced = world.active_instance("a")
    world.astara("router", "unmanage", world.routers["b"])
    eventually(lambda: world.router("b")["State"] == "unmanaged", 15, "b unmanaged")
    assert world.router("b")["Health"] == "unwatched"
    world.kill(kept)
    world.kill(replaced)
    # The positive signal: the health loop found the managed router's appliance dead and
    # replaced it. By then it had long seen the unmanaged one silent too.
    eventually(lambda: world.active_instance("a") != replaced, 90, "a's killed appliance replaced")
    shown = world.router("b")
    assert (shown["State"], shown["Instance"]) == ("unmanaged", kept)
    assert [i.id for i in world.cloud.provider().list() if i.router_id == world.routers["b"]] == [
        kept
    ]
    refused = world.astara("router", "rebuild", world.routers["b"], check=False)
    assert refused.returncode != 0 and "is unmanaged: manage it before rebuilding it" in (
        refused.stderr
    )

    world.astara("router", "manage", world.routers["b"])
    eventually(lambda: world.active_instance("b") != kept, 90, "b replaced once managed")


def test_debug_trace_and_the_event_log_name_who_asked(world: World) -> None:
    world.astara("router", "debug", world.routers["a"])
    world.astara("project", "debug", world.project)
    assert world.router("b")["Debug"] is True
    world.astara("router", "poll", world.routers["a"])
    events = world.json("event", "list", "--limit", "20")
    messages = [e["Message"] for e in events]
    assert f"debug on for project {world.project} (2 routers now)" in messages
    assert all(
        e["Actor"].startswith("demo-admin (user ")
        for e in events
        if e["Message"].startswith("debug on")
    )
    traced = f"router {world.routers['a']}: debug: "
    eventually(
        lambda: traced in world.cloud.orchestrator_log.read_text(), 15, "the traced step logged"
    )
    world.astara("project", "debug", world.project, "--disable")
    assert world.router("a")["Debug"] is False


def test_config_reload_applies_the_mutable_options(world: World) -> None:
    config = world.cloud.config_file
    config.write_text(
        config.read_text().replace("resync_interval = 3600.0", "resync_interval = 1800.0")
    )

    changed = world.json("config", "reload")
    assert {"Option": "resync_interval", "Old": "3600.0", "New": "1800.0"} in changed
    assert world.json("config", "reload") == []


def test_metrics_say_what_happened(world: World) -> None:
    text = httpx.get(f"http://127.0.0.1:{world.cloud.metrics_port}/metrics", timeout=30).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['astara_routers{state="active"}'] == 2
    assert samples['astara_instances{health="alive"}'] == 2
    assert samples['astara_instance_replacements_total{cause="rebuild"}'] >= 1
    assert samples['astara_instance_replacements_total{cause="unreachable"}'] >= 2
    configured = [
        f'astara_event_to_configured_seconds_count{{action="{a}"}}' for a in ("create", "update")
    ]
    assert sum(samples.get(name, 0) for name in configured) >= 2  # one change per router, at least
    assert samples['astara_neutron_request_duration_seconds_count{operation="fetch_router"}'] > 0
    assert samples['astara_worker_queue_events{worker="0"}'] == 0
    assert samples["astara_replacement_breaker_open"] == 0
    assert samples["astara_heartbeats_accepted_total"] > 0


ACTIONS = [
    ("router", "rebuild", "{a}"),
    ("router", "poll", "{a}"),
    ("router", "unmanage", "{a}"),
    ("router", "manage", "{a}"),
    ("router", "debug", "{a}"),
    ("project", "debug", "{project}"),
    ("breaker", "reset"),
    ("config", "reload"),
]


@pytest.mark.parametrize("cloud", ["demo-member", "demo-reader"])
def test_members_and_readers_get_403_on_every_action(world: World, cloud: str) -> None:
    before = world.router("a")
    events = world.json("event", "list")
    for argv in ACTIONS:
        filled = [arg.format(a=world.routers["a"], project=world.project) for arg in argv]
        refused = world.astara(*filled, check=False, cloud=cloud)
        assert refused.returncode != 0, filled
        assert "403" in refused.stderr and "policy does not allow astara:" in refused.stderr
    assert world.json("event", "list") == events  # nothing done, nothing recorded
    after = world.router("a")
    assert (after["Instance"], after["Managed"], after["Debug"]) == (
        before["Instance"],
        before["Managed"],
        before["Debug"],
    )
    # They read their own project's routers (the demo project's, here), not the fleet.
    listed = json.loads(world.astara("router", "list", "-f", "json", cloud=cloud).stdout)
    assert {r["ID"] for r in listed} == set(world.routers.values())
    workers = world.astara("worker", "list", check=False, cloud=cloud)
    assert workers.returncode != 0 and "403" in workers.stderr


def test_no_token_or_a_bad_one_gets_401(world: World) -> None:
    url = f"{world.cloud.api_url}/v1/routers"
    for headers in ({}, {"X-Auth-Token": "not-a-token"}):
        answer = httpx.get(url, headers=headers, timeout=30)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Keystone uri=")
    assert httpx.get(f"{world.cloud.api_url}/", timeout=30).status_code == 200  # versions
