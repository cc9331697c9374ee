"""The management API through its WSGI pipeline: identities, policies, reads and actions.

The real application, the real oslo.policy rules, a real store (SQLite) and a real health
loop; the caller's identity is set by ``identity`` below, a stand-in for keystonemiddleware
(which needs a Keystone: the e2e tests use the real one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2wsgi import ASGIMiddleware
from fastapi import FastAPI
from oslo_config import cfg
from oslo_policy import policy

from astara.orchestrator.api import models
from astara.orchestrator.api.app import create_app
from astara.orchestrator.api.policies import list_rules
from astara.orchestrator.api.server import WSGIApp, strip_identity
from astara.orchestrator.control import Control
from astara.orchestrator.events import Event, EventAction
from astara.orchestrator.health_loop import HealthLoop, HeartbeatKeys
from astara.orchestrator.store import Store
from astara.orchestrator.telemetry import WorkerStatus
from astara.orchestrator.worker import SchedulerStatus, ThreadStatus
from astara.wire.heartbeat import Heartbeat, encode
from tests.unit.clock import FakeClock
from tests.unit.test_health import settle
from tests.unit.test_health_loop import loop_with

pytestmark = pytest.mark.unit

ADMIN = {"roles": "admin,member,reader", "project": "p-admin", "user": "alice"}
MEMBER = {"roles": "member,reader", "project": "p1", "user": "bob"}
READER = {"roles": "reader", "project": "p1", "user": "carol"}


class FakeWorkers:
    """Stands in for the dispatcher (which forks processes): two workers, pids, queues."""

    processes = 2

    def pids(self) -> list[int | None]:
        return [101, None]

    def queue_sizes(self) -> list[int]:
        return [3, 0]


@dataclass
class Api:
    asgi: FastAPI
    app: WSGIApp
    store: Store
    loop: HealthLoop
    clock: FakeClock
    sent: list[Event]
    reloads: list[int] = field(default_factory=list)

    def client(self, who: dict[str, str] | None) -> httpx.Client:
        app = identity(self.app, who) if who else anonymous(self.app)
        return httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://api")


def identity(app: WSGIApp, who: dict[str, str]) -> WSGIApp:
    """What keystonemiddleware puts in the environment for a valid token of ``who``."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        strip_identity(environ)
        environ.update(
            HTTP_X_IDENTITY_STATUS="Confirmed",
            HTTP_X_USER_ID=f"id-{who['user']}",
            HTTP_X_USER_NAME=who["user"],
            HTTP_X_PROJECT_ID=who["project"],
            HTTP_X_ROLES=who["roles"],
        )
        return app(environ, start_response)

    return wrapped


def anonymous(app: WSGIApp) -> WSGIApp:
    """keystonemiddleware with delay_auth_decision and no (or a bad) token."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        strip_identity(environ)
        environ["HTTP_X_IDENTITY_STATUS"] = "Invalid"
        return app(environ, start_response)

    return wrapped


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    loop, receiver, clock, sent = loop_with(tmp_path, routers=3)  # r0..r2 in project "p"
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.ensure_router("r-p1", "p1")
    store.ensure_router("r-p2", "p2")
    store.set_state("r0", "active")
    store.record_error("r1", "configure: nftables: boom")
    loop.tick()
    beat = Heartbeat("i0", 1, clock.now, 0, "d")
    assert receiver.handle(encode(beat, HeartbeatKeys(tmp_path).key_for("i0")))
    reloads: list[int] = []

    def reload() -> list[models.OptionChange]:
        reloads.append(1)
        return [models.OptionChange(option="resync_interval", old="300.0", new="60.0")]

    status = WorkerStatus(
        0,
        101,
        clock.now,
        SchedulerStatus((ThreadStatus("worker0-0", "r0", clock.now),), 5, 1, 2, 4),
        0,
    )
    control = Control(store, sent.append, loop, FakeWorkers(), lambda: {0: status}, reload)
    conf = cfg.ConfigOpts()
    conf([], project="astara-test")
    enforcer = policy.Enforcer(conf)
    enforcer.register_defaults(list_rules())
    app = create_app(control, enforcer, lambda: "Keystone uri='http://keystone/v3'")
    wsgi = ASGIMiddleware(app)  # type: ignore[arg-type]
    yield Api(app, wsgi, store, loop, clock, sent, reloads)  # type: ignore[arg-type]


def test_versions_and_openapi_are_public(api: Api) -> None:
    with api.client(None) as client:
        versions = client.get("/").json()["versions"]
        document = client.get("/openapi.json").json()
    assert versions[0]["id"] == "v1.0"
    assert versions[0]["links"][0]["href"] == "http://api/v1/"
    assert {"/v1/routers", "/v1/routers/{router_id}/rebuild", "/v1/breaker/reset"} <= set(
        document["paths"]
    )


def test_without_a_token_everything_else_is_401(api: Api) -> None:
    with api.client(None) as client:
        for method, path in [("GET", "/v1/routers"), ("POST", "/v1/routers/r0/rebuild")]:
            answer = client.request(method, path)
            assert answer.status_code == 401, path
            assert "token" in answer.json()["message"]
            assert answer.headers["WWW-Authenticate"] == "Keystone uri='http://keystone/v3'"
    assert api.sent == []


def test_an_admin_lists_every_router_with_filters(api: Api) -> None:
    with api.client(ADMIN) as client:
        every = client.get("/v1/routers").json()["routers"]
        active = client.get("/v1/routers", params={"state": "active"}).json()["routers"]
        failing = client.get("/v1/routers", params={"failing": "true"}).json()["routers"]
        of_p1 = client.get("/v1/routers", params={"project_id": "p1"}).json()["routers"]
    assert [r["id"] for r in every] == ["r-p1", "r-p2", "r0", "r1", "r2"]
    assert [r["id"] for r in active] == ["r0"]
    assert [(r["id"], r["last_error"]) for r in failing] == [("r1", "configure: nftables: boom")]
    assert [r["id"] for r in of_p1] == ["r-p1"]
    r0 = every[2]
    assert (r0["instance_id"], r0["health"], r0["acknowledged_generation"]) == ("i0", "alive", 0)
    assert [r["health"] for r in every[3:]] == ["silent", "silent"]  # no heartbeat yet


def test_a_router_shows_its_instances_worker_and_events(api: Api) -> None:
    api.store.log("generation 1 applied", "r0", "i0")
    with api.client(ADMIN) as client:
        router = client.get("/v1/routers/r0").json()
        missing = client.get("/v1/routers/nope")
    assert [i["id"] for i in router["instances"]] == ["i0"]
    assert router["instances"][0]["management_address"] == "fd00::2"
    assert router["events"][0]["message"] == "generation 1 applied"
    worker = router["worker"]
    assert worker["index"] in (0, 1)
    assert worker["thread"] == ("worker0-0" if worker["index"] == 0 else None)
    assert missing.status_code == 404
    assert missing.json()["message"] == "router nope is not known to Astara"


def test_a_project_reader_sees_its_own_routers_only(api: Api) -> None:
    with api.client(READER) as client:
        listed = client.get("/v1/routers").json()["routers"]
        own = client.get("/v1/routers/r-p1")
        other = client.get("/v1/routers/r-p2")
        other_project = client.get("/v1/routers", params={"project_id": "p2"})
        workers = client.get("/v1/workers")
    assert [r["id"] for r in listed] == ["r-p1"]
    assert own.status_code == 200
    assert other.status_code == 404  # not 403: its existence is not disclosed
    assert other_project.status_code == 403
    assert workers.status_code == 403


ACTIONS = [
    ("POST", "/v1/routers/r-p1/rebuild", None),
    ("POST", "/v1/routers/r-p1/poll", None),
    ("POST", "/v1/routers/r-p1/unmanage", None),
    ("POST", "/v1/routers/r-p1/debug", {"enabled": True}),
    ("POST", "/v1/projects/p1/debug", {"enabled": True}),
    ("POST", "/v1/breaker/reset", None),
    ("POST", "/v1/config/reload", None),
]


@pytest.mark.parametrize("who", [MEMBER, READER], ids=["member", "reader"])
@pytest.mark.parametrize(("method", "path", "body"), ACTIONS)
def test_members_and_readers_may_not_act(
    api: Api, who: dict[str, str], method: str, path: str, body: Any
) -> None:
    before = api.store.get_router("r-p1")
    with api.client(who) as client:
        answer = client.request(method, path, json=body)
    assert answer.status_code == 403
    assert answer.json()["message"].startswith("policy does not allow astara:")
    assert api.store.get_router("r-p1") == before
    assert not api.store.project_debug("p1")
    assert (api.sent, api.reloads, api.store.events()) == ([], [], [])


def test_rebuild_records_who_asked_and_reaches_the_worker(api: Api) -> None:
    with api.client(ADMIN) as client:
        answer = client.post("/v1/routers/r0/rebuild", json={"image": "appliance-v2"})
    assert answer.status_code == 202
    assert answer.json()["action"] == "rebuild"
    router = api.store.get_router("r0")
    assert router is not None
    assert (router.rebuild_requested, router.image, router.flavor) == (True, "appliance-v2", None)
    assert [(e.resource_id, e.action, e.cause) for e in api.sent] == [
        ("r0", EventAction.REBUILD, "operator")
    ]
    (logged,) = api.store.events("r0")
    assert logged.message == "rebuild requested (image appliance-v2)"
    assert logged.actor == "alice (user id-alice, project p-admin)"


def test_rebuild_keeps_an_omitted_choice_and_resets_a_null_one(api: Api) -> None:
    api.store.set_boot_overrides("r0", "img-1", "flavor-1")
    with api.client(ADMIN) as client:
        assert client.post("/v1/routers/r0/rebuild", json={"flavor": None}).status_code == 202
        router = api.store.get_router("r0")
        assert router is not None and (router.image, router.flavor) == ("img-1", None)
        assert client.post("/v1/routers/r0/rebuild").status_code == 202
    router = api.store.get_router("r0")
    assert router is not None and (router.image, router.flavor) == ("img-1", None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": ""}, "image"),
        ({"image": "x" * 256}, "image"),
        ({"image": "bad\nname"}, "image"),
        ({"flavor": 3}, "flavor"),
        ({"imgae": "typo"}, "imgae"),
    ],
)
def test_a_bad_rebuild_body_is_400_naming_the_field_and_changes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    with api.client(ADMIN) as client:
        answer = client.post("/v1/routers/r0/rebuild", json=body)
    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert [p["loc"][-1] for p in problems] == [field]
    router = api.store.get_router("r0")
    assert router is not None and not router.rebuild_requested and router.image is None
    assert (api.sent, api.store.events()) == ([], [])


def test_actions_on_unknown_or_unmanaged_routers_are_refused(api: Api) -> None:
    api.store.set_managed("r1", False)
    with api.client(ADMIN) as client:
        unknown = client.post("/v1/routers/nope/poll")
        unmanaged = client.post("/v1/routers/r1/rebuild")
        polled = client.post("/v1/routers/r1/poll")
        again = client.post("/v1/routers/r1/unmanage")
    assert unknown.status_code == 404
    assert unmanaged.status_code == 409
    assert unmanaged.json()["message"] == "router r1 is unmanaged: manage it before rebuilding it"
    assert polled.status_code == 409
    assert again.json()["message"] == "router r1 is already unmanaged"
    router = api.store.get_router("r1")
    assert router is not None and not router.rebuild_requested
    assert (api.sent, api.store.events()) == ([], [])


def test_unmanage_and_manage_are_recorded_and_sent(api: Api) -> None:
    with api.client(ADMIN) as client:
        unmanaged = client.post("/v1/routers/r2/unmanage").json()
        managed = client.post("/v1/routers/r2/manage").json()
    assert (unmanaged["managed"], managed["managed"]) == (False, True)
    assert [(e.resource_id, e.action) for e in api.sent] == [("r2", EventAction.POLL)] * 2
    assert [e.message for e in api.store.events("r2")] == ["router managed", "router unmanaged"]


def test_debug_of_a_project_reaches_its_routers_now_and_later(api: Api) -> None:
    with api.client(ADMIN) as client:
        project = client.post("/v1/projects/p1/debug", json={"enabled": True}).json()
        repeat = client.post("/v1/projects/p1/debug", json={"enabled": True})
        router = client.post("/v1/routers/r0/debug", json={"enabled": True}).json()
        missing_field = client.post("/v1/routers/r0/debug", json={})
    assert project == {"id": "p1", "debug": True, "routers": 1}
    assert repeat.status_code == 409
    assert router["debug"] is True
    assert missing_field.status_code == 400
    assert api.store.ensure_router("r-p1-later", "p1").debug
    assert not api.store.ensure_router("r-p3", "p3").debug


def test_the_breaker_resets_only_when_open(api: Api) -> None:
    with api.client(ADMIN) as client:
        closed = client.post("/v1/breaker/reset")
        api.clock.now += 10  # every instance silent: 3 of 3 dead opens it
        settle(api.loop)
        shown = client.get("/v1/breaker").json()
        reset = client.post("/v1/breaker/reset")
        api.loop.tick()
        after = client.get("/v1/breaker").json()
    assert closed.status_code == 409
    assert (shown["open"], shown["recent_deaths"], shown["watched_instances"]) == (True, 3, 3)
    assert reset.status_code == 200
    assert after["open"] is False
    (logged,) = api.store.events()
    assert logged.message.startswith("circuit breaker reset (it was open: 3 of 3 instances")


def test_workers_events_and_reload(api: Api) -> None:
    api.store.log("instance booted", "r0", "i0")
    with api.client(ADMIN) as client:
        workers = client.get("/v1/workers").json()["workers"]
        events = client.get("/v1/events", params={"router_id": "r0", "limit": 1}).json()
        too_many = client.get("/v1/events", params={"limit": 1001})
        reloaded = client.post("/v1/config/reload").json()
    assert [(w["index"], w["pid"], w["alive"], w["queue_events"]) for w in workers] == [
        (0, 101, True, 3),
        (1, None, False, 0),
    ]
    assert workers[0]["threads"][0]["router_id"] == "r0"
    assert workers[0]["inbox_events"] == 4
    assert [e["message"] for e in events["events"]] == ["instance booted"]
    assert too_many.status_code == 400 and too_many.json()["problems"][0]["loc"][-1] == "limit"
    assert reloaded["changed"][0]["option"] == "resync_interval"
    assert api.reloads == [1]
