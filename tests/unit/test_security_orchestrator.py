"""The orchestrator-side holes of the security review (issue #12), as pure decisions.

Each test names the item it reproduces; the appliance-side ones are in test_security.py.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import queue
import signal
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import oslo_messaging
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from oslo_config import cfg
from prometheus_client import CollectorRegistry

from astara.appliance.api import create_app
from astara.appliance.credentials import TlsIdentity
from astara.appliance.engine import Engine
from astara.common.files import write_private_atomic
from astara.common.tls import LEAF_VALIDITY, CertificateAuthority, Issued
from astara.drivers.router import render
from astara.neutron.forwarder import EventForwarder
from astara.neutron.protocol import TOPIC, RouterEvent
from astara.orchestrator import appliance_client, service
from astara.orchestrator.appliance_client import Unreachable
from astara.orchestrator.dispatcher import Dispatcher
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.feed import Feed, ProjectPolls
from astara.orchestrator.health_loop import HeartbeatKeys, WeakSecret
from astara.orchestrator.heartbeat import RATE_LIMITED, HeartbeatReceiver, RateLimit, SourceLimiter
from astara.orchestrator.migrations import upgrade
from astara.orchestrator.reconciler import LoggingStatusReporter, RouterReconciler, Settings
from astara.orchestrator.rotation import CertificateRotation, renew_client_identity
from astara.orchestrator.state import State
from astara.orchestrator.store import InstanceRecord, Store
from astara.orchestrator.worker import Worker
from astara.providers.confine import confined, outermost
from astara.providers.noop import NoopProvider
from astara.wire.heartbeat import Heartbeat, encode
from tests.unit.clock import FakeClock
from tests.unit.test_api import FixedStatus
from tests.unit.test_engine import RecordingSubsystem, fake_links
from tests.unit.test_reconciler import FakeAppliance, FixedSource, poll
from tests.unit.test_router_driver import (
    MGMT,
    PRIVATE_NET,
    ROUTER_ID,
    VM1_PORT,
    recorded,
    snapshot_of,
)

pytestmark = [pytest.mark.unit, pytest.mark.security]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(url)
    return Store(url)


def with_port(raw: dict[str, Any], port_id: str, **changes: Any) -> dict[str, Any]:
    raw["network_ports"] = [
        {**port, **changes} if port["id"] == port_id else port for port in raw["network_ports"]
    ]
    return raw


def allocation(raw: dict[str, Any], port_id: str) -> Any:
    config = render(snapshot_of(raw), 1, MGMT)
    private = next(net for net in config.networks if net.id == PRIVATE_NET)
    return next((a for a in private.allocations if a.port_id == port_id), None)


# Item 3: a port dns_name Neutron allows must not freeze a router.


@pytest.mark.parametrize(
    ("dns_name", "served"),
    [
        ("web-1.example.org.", "web-1.example.org"),  # absolute: Neutron keeps the dot
        ("Web-1", "web-1"),
        (("a" * 63 + ".") * 3 + "a" * 61 + ".", ("a" * 63 + ".") * 3 + "a" * 61),  # 254 with dot
    ],
)
def test_names_neutron_allows_are_normalised(dns_name: str, served: str) -> None:
    assert allocation(with_port(recorded(), VM1_PORT, dns_name=dns_name), VM1_PORT).hostname == (
        served
    )


def test_a_name_dns_cannot_carry_falls_back_to_the_address_name_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    too_long = ("a" * 63 + ".") * 3 + "a" * 62  # 254 characters: Neutron takes it, DNS not
    caplog.set_level(logging.WARNING, "astara.drivers.router")
    served = allocation(with_port(recorded(), VM1_PORT, dns_name=too_long), VM1_PORT)
    assert served.hostname == "host-10-0-0-5"
    assert any(ROUTER_ID in m and VM1_PORT in m for m in caplog.messages)


def test_a_port_the_document_cannot_carry_is_skipped_alone_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = recorded()
    vm1 = next(p for p in raw["network_ports"] if p["id"] == VM1_PORT)
    subnet = vm1["fixed_ips"][0]["subnet_id"]
    # Neutron's max_fixed_ips_per_port is configurable; the document takes 16 per port.
    many = [{"subnet_id": subnet, "ip_address": f"10.0.0.{100 + i}"} for i in range(17)]
    caplog.set_level(logging.WARNING, "astara.drivers.router")
    config = render(snapshot_of(with_port(raw, VM1_PORT, fixed_ips=many)), 1, MGMT)
    private = next(net for net in config.networks if net.id == PRIVATE_NET)
    assert VM1_PORT not in {a.port_id for a in private.allocations}
    assert private.allocations  # the other ports are still served
    assert any(ROUTER_ID in m and VM1_PORT in m and "not served" in m for m in caplog.messages)


def test_a_document_that_cannot_be_rendered_is_an_error_with_a_reason(store: Store) -> None:
    appliance, provider = FakeAppliance(), NoopProvider()
    source = FixedSource(snapshot_of(recorded()))
    reconciler = RouterReconciler(
        source=source,
        store=store,
        provider=provider,
        clients=appliance,  # type: ignore[arg-type]
        status=LoggingStatusReporter(),
        settings=Settings(management_prefixlen=64),
    )

    def state_after(steps: int) -> str:
        for _ in range(steps):
            reconciler.step(ROUTER_ID, poll("test"))
        record = store.get_router(ROUTER_ID)
        assert record is not None
        return record.state

    assert state_after(4) == State.ACTIVE.value
    applied = appliance.config
    # More DNS servers than the document carries (Neutron's max_dns_nameservers is configurable).
    bad = recorded()
    bad["subnets"][0]["dns_nameservers"] = [f"192.0.2.{i}" for i in range(1, 18)]
    source.snapshot = snapshot_of(bad)
    assert state_after(2) == State.ERROR.value
    record = store.get_router(ROUTER_ID)
    assert record is not None and record.last_error is not None
    assert "dns_nameservers" in record.last_error
    assert any("cannot be rendered" in e.message for e in store.events(ROUTER_ID))
    assert appliance.config is applied  # the appliance keeps serving its last document
    assert state_after(3) == State.ERROR.value  # and stays there: no retry loop

    source.snapshot = snapshot_of(recorded())  # the tenant fixes it: a change leaves ERROR
    assert state_after(3) == State.ACTIVE.value


# Item 13: the Neutron plugin forwarded the caller's whole context, token included.


class Recorder:
    """A notification endpoint keeping each message's context."""

    def __init__(self) -> None:
        self.contexts: queue.Queue[Any] = queue.Queue()

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> None:
        self.contexts.put(ctxt if isinstance(ctxt, dict) else ctxt.to_dict())


def test_forwarded_events_carry_the_callers_ids_and_no_credential() -> None:
    conf = cfg.ConfigOpts()
    conf([])
    conf.register_opt(cfg.StrOpt("host", default="neutron-1"))
    # oslo.messaging's in-process transport: the real notifier and listener, no broker.
    transport = oslo_messaging.get_notification_transport(conf, url="fake:/")
    recorder = Recorder()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=TOPIC)], [recorder], executor="threading"
    )
    listener.start()
    caller = {
        "auth_token": "gAAAAA-the-callers-token",
        "user_id": "u1",
        "project_id": "p1",
        "request_id": "req-1",
        "roles": ["admin"],
        "is_admin": True,
        "service_catalog": [{"type": "identity"}],
    }
    try:
        EventForwarder(conf, transport).send(
            caller, RouterEvent("router", "create", "r1", "p1", "r1", "test")
        )
        sent = recorder.contexts.get(timeout=10)
    finally:
        listener.stop()
        listener.wait()
    assert (sent["request_id"], sent["user"], sent["project_id"]) == ("req-1", "u1", "p1")
    assert "gAAAAA" not in str(sent)
    assert not sent.get("roles") and not sent.get("is_admin") and not sent.get("service_catalog")


# Item 8: an empty or short heartbeat secret made every appliance's key computable; floods of
# heartbeats were not limited per source.


@pytest.mark.parametrize("content", ["", "\n", "ab" * 16, "not hex at all"])
def test_an_empty_or_short_heartbeat_secret_stops_the_orchestrator_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    secret = tmp_path / "heartbeat.secret"
    secret.write_text(content)
    with pytest.raises(WeakSecret, match=r"heartbeat\.secret"):
        HeartbeatKeys(tmp_path)
    config = tmp_path / "orchestrator.ini"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n")
    assert service.main(["--config-file", str(config)]) == 2
    assert "heartbeat secret" in capsys.readouterr().err
    assert secret.read_text() == content  # left for the operator, never replaced behind them


def test_the_heartbeat_secret_is_made_whole_private_and_once(tmp_path: Path) -> None:
    keys: list[bytes] = []

    def start() -> None:
        keys.append(HeartbeatKeys(tmp_path).key_for("i1"))

    starters = [threading.Thread(target=start) for _ in range(8)]  # processes starting at once
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    secret = tmp_path / "heartbeat.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(bytes.fromhex(secret.read_text().strip())) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat.secret"]  # no temporary left


def test_a_crash_while_writing_leaves_no_partial_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def power_cut(fd: int) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError, match="power cut"):
        HeartbeatKeys(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither an empty secret nor a temporary file
    monkeypatch.undo()
    HeartbeatKeys(tmp_path)
    assert len(bytes.fromhex((tmp_path / "heartbeat.secret").read_text().strip())) == 32


def test_write_private_atomic_replaces_in_one_step_and_private(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    path.write_text("old")
    os.chmod(path, 0o644)
    assert write_private_atomic(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not write_private_atomic(path, b"other", replace=False)
    assert path.read_bytes() == b"new"


INSTANCE = "3f1c2a4e-0000-4000-8000-000000000001"
KEY = b"k" * 32


def test_a_heartbeat_flood_from_one_source_is_cut_before_its_signature_is_checked() -> None:
    clock = FakeClock(1_700_000_000.0)
    limit = RateLimit(rate=1.0, burst=5.0, sources=16)
    registry = CollectorRegistry()
    receiver = HeartbeatReceiver(("127.0.0.1", 0), registry, limit, clock=clock)
    receiver.register(INSTANCE, KEY)

    def beat(seq: int) -> bytes:
        return encode(Heartbeat(INSTANCE, seq, clock(), 1, "sha256:x"), KEY)

    flood = [receiver.handle(beat(seq), "192.0.2.66") for seq in range(1, 101)]
    assert sum(1 for b in flood if b is not None) == 5  # the burst, then nothing
    assert receiver.handle(beat(101), "192.0.2.7") is not None  # another source is untouched
    rejected = {"reason": RATE_LIMITED}
    assert registry.get_sample_value("astara_heartbeats_rejected_total", rejected) == 95
    clock.now += 2.0  # the rate refills the bucket
    assert receiver.handle(beat(102), "192.0.2.66") is not None


def test_the_rate_limit_table_stays_bounded_and_forgets_the_least_recent() -> None:
    limiter = SourceLimiter(RateLimit(rate=1.0, burst=2.0, sources=16))
    assert limiter.allow("appliance", 0.0) and limiter.allow("appliance", 0.0)
    assert not limiter.allow("appliance", 0.0)
    for n in range(10_000):  # forged source addresses
        limiter.allow(f"198.51.{n // 256}.{n % 256}", 0.0)
    assert len(limiter) == 16
    assert limiter.allow("appliance", 0.0)  # forgotten: back with a full bucket, never silenced


# Item 7: event amplification. Every tenant port event became a project-wide Neutron read on
# the notification thread; worker queues were unbounded (100k events: +22 MB).


def router_event(router_id: str, action: EventAction = EventAction.UPDATE) -> Event:
    return Event(ResourceType.ROUTER, router_id, "p", action, "port.update.end", datetime.now(UTC))


def test_a_full_worker_queue_holds_one_merged_entry_per_router_and_loses_no_change() -> None:
    full: queue.Queue[Event] = queue.Queue(maxsize=2)  # a worker that stopped reading
    feed = Feed(lambda event: full.put(event, timeout=0.05), "test-feed")
    feed.start()
    try:
        for n in range(100_000):  # returns at once although nothing is read
            feed.put(router_event(f"r{n % 100}"))
        feed.put(router_event("r7", EventAction.DELETE))
        feed.put(router_event("r7", EventAction.CREATE))  # re-created after the delete
        assert feed.pending() <= 100 + 1  # one merged update per router, r7's delete + create
        delivered: list[Event] = []
        while len({e.resource_id for e in delivered}) < 100 or not any(
            (e.resource_id, e.action) == ("r7", EventAction.CREATE) for e in delivered
        ):
            delivered.append(full.get(timeout=5))
    finally:
        feed.stop()
    while not full.empty():  # the feed has stopped: nothing more comes
        delivered.append(full.get_nowait())
    assert len(delivered) <= 100 + 1 + 2  # coalesced: the burst became ~one event per router
    assert {e.resource_id for e in delivered} == {f"r{n}" for n in range(100)}
    r7 = [e.action for e in delivered if e.resource_id == "r7"]
    assert r7[-2:] == [EventAction.DELETE, EventAction.CREATE]


def test_a_stopped_worker_process_bounds_its_queue_and_gets_every_router_when_it_resumes() -> None:
    stepped: multiprocessing.queues.Queue[tuple[str, str]] = multiprocessing.get_context(
        "fork"
    ).Queue()

    def factory(index: int, telemetry: Any) -> Worker:
        def step(router_id: str, event: Event | None) -> None:
            stepped.put((router_id, event.action.value if event else ""))

        return Worker(step, threads=1)

    dispatcher = Dispatcher(1, factory, queue_size=10)
    dispatcher.start()
    (pid,) = dispatcher.pids()
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        for n in range(50_000):
            dispatcher.dispatch(router_event(f"r{n % 50}"))
        dispatcher.dispatch(router_event("r0", EventAction.DELETE))
        assert sum(dispatcher.queue_sizes()) <= 10 + 50
        os.kill(pid, signal.SIGCONT)
        seen: dict[str, list[str]] = {}
        deadline = time.monotonic() + 20
        while len(seen) < 50 or "delete" not in seen["r0"]:
            router_id, action = stepped.get(timeout=max(0.1, deadline - time.monotonic()))
            seen.setdefault(router_id, []).append(action)
    finally:
        os.kill(pid, signal.SIGCONT)
        dispatcher.stop()
    assert set(seen) == {f"r{n}" for n in range(50)}


def test_project_polls_leave_the_notification_thread_and_coalesce() -> None:
    polled: list[str] = []
    reading, release = threading.Event(), threading.Event()

    def poll(project_id: str) -> None:  # the Neutron list and the store query
        polled.append(project_id)
        reading.set()
        release.wait(10)

    polls = ProjectPolls(poll)
    polls.start()
    try:
        polls.ask("p1")
        assert reading.wait(5)
        for _ in range(1000):  # a burst of port events while p1's routers are being read
            polls.ask("p1")  # returns at once: the read is not on this thread
        polls.ask("p2")
        assert polls.pending() == 2
        release.set()
        deadline = time.monotonic() + 5
        while len(polled) < 3 or polls.pending():
            assert time.monotonic() < deadline, polled
            time.sleep(0.01)
    finally:
        release.set()
        polls.stop()
    assert polled == ["p1", "p1", "p2"]


# Item 12: the client certificate lasted 825 days and was never renewed; appliance
# certificates were never rotated.

NOW = datetime.now(UTC)
DUE = NOW + LEAF_VALIDITY * 0.6  # a clock moved past half a certificate's lifetime
ADDRESS = "fdca:3ba5:a17a:acda::5"


def certificate_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_the_client_certificate_is_renewed_once_due_and_reloaded_by_every_call(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    identity = tmp_path / "orchestrator-client.pem"
    (tmp_path / "orchestrator-client.key").write_text("the key before key and cert shared a file")
    assert renew_client_identity(ca, identity, NOW)  # none yet
    first = identity.read_bytes()
    assert not (tmp_path / "orchestrator-client.key").exists()
    context = appliance_client._context(identity, identity, (tmp_path / "ca" / "ca.pem"))
    assert (
        appliance_client._context(identity, identity, (tmp_path / "ca" / "ca.pem")) is context
    )  # cached
    assert not renew_client_identity(ca, identity, NOW + LEAF_VALIDITY * 0.4)
    assert identity.read_bytes() == first

    assert renew_client_identity(ca, identity, DUE)
    assert identity.read_bytes() != first
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in identity.read_bytes()
    assert (
        certificate_of(identity.read_bytes()).serial_number != certificate_of(first).serial_number
    )
    # The next call of any process loads the new one; the old one stays valid meanwhile.
    assert (
        appliance_client._context(identity, identity, (tmp_path / "ca" / "ca.pem")) is not context
    )


@pytest.fixture
def appliance_tls(tmp_path: Path) -> tuple[CertificateAuthority, TlsIdentity]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert, key = tmp_path / "appliance.pem", tmp_path / "appliance.key"
    ca.issue("appliance-i1", "server", ips=[ADDRESS]).write(cert, key)
    return ca, TlsIdentity(cert, key, tmp_path / "ca" / "ca.pem", ADDRESS)


class LoadedContext:
    """Stands in for the serving SSLContext: records what it is told to load."""

    def __init__(self) -> None:
        self.loaded: list[tuple[bytes, bytes]] = []

    def load_cert_chain(self, cert: Path, key: Path) -> None:
        self.loaded.append((cert.read_bytes(), key.read_bytes()))


def appliance_api(identity: TlsIdentity, tmp_path: Path) -> TestClient:
    engine = Engine([RecordingSubsystem("links", [])], tmp_path / "state", fake_links)
    return TestClient(create_app(engine, FixedStatus(), identity=identity))


def put(client: TestClient, issued: Issued, key: bytes | None = None) -> Any:
    body = {"cert": issued.cert_pem.decode(), "key": (key or issued.key_pem).decode()}
    return client.put("/v1/credentials", json=body)


def test_an_appliance_takes_a_new_certificate_over_its_api_and_serves_it(
    appliance_tls: tuple[CertificateAuthority, TlsIdentity], tmp_path: Path
) -> None:
    ca, identity = appliance_tls
    context = LoadedContext()
    identity.context = context  # type: ignore[assignment]
    new = ca.issue("appliance-i1", "server", ips=[ADDRESS])
    answer = put(appliance_api(identity, tmp_path), new)
    assert answer.status_code == 200, answer.text
    assert (identity.cert.read_bytes(), identity.key.read_bytes()) == (new.cert_pem, new.key_pem)
    assert context.loaded == [(new.cert_pem, new.key_pem)]  # served from the next connection
    assert stat.S_IMODE(identity.key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("another CA", "unable to get local issuer certificate"),
        ("another address", "IP address mismatch"),
        ("expired", "certificate has expired"),
        ("a client certificate", "unsuitable certificate purpose"),
        ("the key of another", "do not go together"),
        ("not PEM", "PEM"),
    ],
)
def test_a_certificate_peers_would_refuse_is_422_and_changes_nothing(
    appliance_tls: tuple[CertificateAuthority, TlsIdentity], tmp_path: Path, case: str, reason: str
) -> None:
    ca, identity = appliance_tls
    before = identity.cert.read_bytes(), identity.key.read_bytes()
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    issued, key = {
        "another CA": (other.issue("a", "server", ips=[ADDRESS]), None),
        "another address": (ca.issue("a", "server", ips=["fdca:3ba5:a17a:acda::6"]), None),
        "expired": (ca.issue("a", "server", ips=[ADDRESS], now=NOW - LEAF_VALIDITY * 1.1), None),
        "a client certificate": (ca.issue("a", "client", ips=[ADDRESS]), None),
        "the key of another": (
            ca.issue("a", "server", ips=[ADDRESS]),
            ca.issue("b", "server", ips=[ADDRESS]).key_pem,
        ),
        "not PEM": (Issued(b"junk", b"junk"), None),
    }[case]
    answer = put(appliance_api(identity, tmp_path), issued, key)
    assert answer.status_code == 422, answer.text
    assert reason in answer.json()["detail"][0]["msg"]
    assert "PRIVATE KEY" not in answer.text
    assert (identity.cert.read_bytes(), identity.key.read_bytes()) == before


def test_a_replacement_a_crash_interrupted_is_finished_at_start(
    appliance_tls: tuple[CertificateAuthority, TlsIdentity],
) -> None:
    ca, identity = appliance_tls
    new = ca.issue("appliance-i1", "server", ips=[ADDRESS])
    # Crashed after the pending pair was saved and the key replaced, before the certificate.
    pending = identity.cert.with_name(".appliance.pem.pending")
    write_private_atomic(pending, new.key_pem + new.cert_pem)
    write_private_atomic(identity.key, new.key_pem)
    TlsIdentity(identity.cert, identity.key, identity.ca, ADDRESS).finish_pending()
    assert (identity.cert.read_bytes(), identity.key.read_bytes()) == (new.cert_pem, new.key_pem)
    assert not pending.exists()


class FakeAppliances:
    """The appliance API of each address: the certificate it presents, what it was sent."""

    def __init__(self, presented: dict[str, x509.Certificate]) -> None:
        self.presented = presented
        self.sent: dict[str, Issued] = {}

    def __call__(self, address: str) -> Any:
        appliances = self

        class Client:
            def __enter__(self) -> Client:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def server_certificate(self) -> x509.Certificate:
                if address not in appliances.presented:
                    raise Unreachable(f"{address}: no answer")
                return appliances.presented[address]

            def put_credentials(self, issued: Issued) -> None:
                appliances.sent[address] = issued

        return Client()


def instance_at(instance_id: str, address: str | None, reachable: bool = True) -> InstanceRecord:
    return InstanceRecord(
        instance_id, "r1", "netns", instance_id, address, 1, "up", reachable, None, datetime.now()
    )


def test_rotation_renews_each_appliance_past_half_its_certificates_life(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    fresh = certificate_of(ca.issue("appliance-i1", "server", ips=["fd00::2"]).cert_pem)
    appliances = FakeAppliances({"fd00::2": fresh, "fd00::3": fresh})
    clock = [datetime.now(UTC)]  # not NOW: the certificates are stamped now, minutes later
    rotation = CertificateRotation(
        ca,
        tmp_path / "orchestrator-client.pem",
        lambda: [
            instance_at("i1", "fd00::2"),
            instance_at("i2", "fd00::3"),
            instance_at("i3", "fd00::4"),  # does not answer: tried again next time
            instance_at("i4", None),  # not booted yet
        ],
        appliances,
        lambda: clock[0],
        interval=3600,
    )
    assert rotation.check() == []
    clock[0] = DUE
    assert rotation.check() == ["i1", "i2"]
    renewed = certificate_of(appliances.sent["fd00::2"].cert_pem)
    assert renewed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "appliance-i1"
    assert ipaddress.ip_address("fd00::2") in renewed.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.IPAddress)


# Item 6: appliances started by the netns provider could read every secret on the host (the
# namespaces themselves are tested in tests/functional/test_appliance_confinement.py).


def test_the_confined_command_hides_every_private_path_and_keeps_the_appliances_argv() -> None:
    argv = confined([Path("/var/lib/astara"), Path("/srv/netns")], Path("/srv/netns/i1"), ["app"])
    assert argv[:5] == ["unshare", "--pid", "--kill-child", "--mount-proc", "--"]
    options = argv[argv.index("astara.providers.confine") + 1 :]
    assert options == [
        "--hide", "/var/lib/astara", "--hide", "/srv/netns", "--own", "/srv/netns/i1", "--", "app"
    ]  # fmt: skip


def test_only_the_outermost_of_nested_private_paths_is_covered(tmp_path: Path) -> None:
    inner, other = tmp_path / "state" / "netns", tmp_path / "other"
    assert outermost([inner, tmp_path / "state", other, inner]) == [other, tmp_path / "state"]
