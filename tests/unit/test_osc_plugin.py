"""``openstack astara ...`` in process, against the management API served by waitress.

The real OpenStackClient, the plugin, openstacksdk and the server (noauth: Keystone is the e2e
tests' business), over a real store and health loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from openstackclient import shell
from oslo_config import cfg

from astara.orchestrator import config
from astara.orchestrator.api.server import ApiServer, pipeline
from astara.orchestrator.events import EventAction
from tests.unit.test_management_api import Api, api  # noqa: F401 -- the fixture

pytestmark = pytest.mark.unit


@pytest.fixture
def served(api: Api) -> Iterator[tuple[Api, int]]:  # noqa: F811
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf([], project="astara-test")
    conf.set_override("auth_strategy", "noauth", "api")
    conf.set_override("port", 0, "api")
    conf.set_override("max_body_size", 1024, "api")
    server = ApiServer(pipeline(api.asgi, conf), conf)
    server.start()
    try:
        yield api, server.port
    finally:
        server.stop()


def openstack(port: int, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = shell.main(
        ["--os-auth-type", "none", "--os-endpoint", f"http://127.0.0.1:{port}", "astara", *argv]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_command_lists_shows_acts_and_refuses(served: tuple[Api, int], capsys) -> None:
    """One test, one server: OpenStackClient caches each plugin's client for the process."""
    server_api, port = served
    code, table = openstack(port, capsys, "router", "list")
    assert code == 0 and "| r0 " in table and "Last Error" in table
    code, out = openstack(port, capsys, "router", "list", "--failing", "-f", "json")
    assert [r["ID"] for r in json.loads(out)] == ["r1"]
    code, out = openstack(port, capsys, "router", "show", "r0", "-f", "json")
    shown = json.loads(out)
    assert (shown["Instances"][0]["id"], shown["Health"]) == ("i0", "alive")
    code, out = openstack(port, capsys, "worker", "list", "-f", "json")
    assert json.loads(out)[0]["Stepping"] == "r0"
    code, out = openstack(port, capsys, "instance", "list", "--router", "r1", "-f", "value")
    assert out.split()[0] == "i1"
    code, out = openstack(port, capsys, "breaker", "show", "-f", "json")
    assert json.loads(out)["Open"] is False

    code, out = openstack(port, capsys, "router", "rebuild", "nope")
    assert code != 0 and "router nope is not known to Astara" in out
    code, out = openstack(port, capsys, "breaker", "reset")
    assert code != 0 and "the circuit breaker is closed" in out
    assert server_api.sent == []

    assert openstack(port, capsys, "router", "rebuild", "r0", "--image", "v2")[0] == 0
    assert openstack(port, capsys, "router", "poll", "r1")[0] == 0
    assert openstack(port, capsys, "router", "unmanage", "r2")[0] == 0
    assert openstack(port, capsys, "router", "debug", "r1")[0] == 0
    assert openstack(port, capsys, "project", "debug", "p1")[0] == 0
    assert [(e.resource_id, e.action) for e in server_api.sent] == [
        ("r0", EventAction.REBUILD),
        ("r1", EventAction.POLL),
        ("r2", EventAction.POLL),
    ]
    code, out = openstack(port, capsys, "event", "list", "-f", "json", "--limit", "2")
    events = json.loads(out)
    assert [e["Message"] for e in events] == ["debug on for project p1 (1 routers now)", "debug on"]
    assert events[0]["Actor"].startswith("noauth ")
    router = server_api.store.get_router("r0")
    assert router is not None and router.image == "v2"
    code, out = openstack(port, capsys, "config", "reload", "-f", "json")
    assert json.loads(out) == [{"Option": "resync_interval", "Old": "300.0", "New": "60.0"}]


def test_noauth_ignores_a_claimed_identity_and_bounds_bodies(served: tuple[Api, int]) -> None:
    server_api, port = served
    url = f"http://127.0.0.1:{port}/v1/routers/r0/poll"
    claimed = {"X-User-Name": "mallory", "X-Identity-Status": "Confirmed", "X-Roles": "admin"}
    assert httpx.post(url, headers=claimed).status_code == 202
    (logged,) = server_api.store.events("r0")
    assert logged.actor is not None and logged.actor.startswith("noauth ")
    big = httpx.post(url.replace("poll", "rebuild"), json={"image": "x" * 2000})
    assert big.status_code == 413
