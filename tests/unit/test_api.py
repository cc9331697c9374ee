"""The appliance API over a real Engine whose subsystems are recording test doubles."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from astara.appliance import service
from astara.appliance.api import create_app
from astara.appliance.engine import APPLY_ORDER, Engine
from astara.appliance.status import (
    Counters,
    InterfaceCounters,
    InterfaceStatus,
    RuleCounter,
    interfaces_from_netlink,
    link_counters_from_netlink,
)
from astara.wire.document import config_digest, dump_with_secrets
from tests.unit.test_engine import (
    Call,
    FakeProbe,
    RecordingSubsystem,
    document,
    fake_links,
    probed_engine,
    signature,
)

pytestmark = pytest.mark.unit

PROXY_KEY = signature("do-not-leak-me")


class FixedStatus:
    """Test double for the kernel readers: fixed answers."""

    def interfaces(self) -> list[InterfaceStatus]:
        return [
            InterfaceStatus(
                name="eth0",
                mac="fa:16:3e:00:00:01",
                addresses=["fdca::5/64"],
                mtu=1500,
                state="up",
                port_id="port-0",
            )
        ]

    def counters(self) -> Counters:
        return Counters(
            interfaces=[
                InterfaceCounters(name="eth0", rx_packets=1, rx_bytes=2, tx_packets=3, tx_bytes=4)
            ],
            rules=[RuleCounter(chain="postrouting", rule="snat", packets=5, bytes=6)],
            conntrack_entries=7,
        )


@pytest.fixture
def journal() -> list[Call]:
    return []


@pytest.fixture
def failing() -> dict[str, set[int]]:
    return {name: set() for name in APPLY_ORDER}


@pytest.fixture
def client(tmp_path: Path, journal: list[Call], failing: dict[str, set[int]]) -> TestClient:
    subsystems = [RecordingSubsystem(name, journal, failing[name]) for name in APPLY_ORDER]
    return TestClient(create_app(Engine(subsystems, tmp_path, fake_links), FixedStatus()))


def body(generation: int = 1, **changes: Any) -> dict[str, Any]:
    return json.loads(dump_with_secrets(document(generation, proxy_key=PROXY_KEY, **changes)))


def test_openapi_schema_publishes_every_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/health",
        "/v1/interfaces",
        "/v1/config",
        "/v1/counters",
        "/v1/reapply",
        "/v1/credentials",
    }
    assert "ApplianceConfig" in schema["components"]["schemas"]
    # PUT reads its body itself; clients and the fuzz test still see the document's schema.
    put = schema["paths"]["/v1/config"]["put"]["requestBody"]
    assert put["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ApplianceConfig"
    }


def test_a_put_shares_the_sections_it_does_not_change_with_the_applied_document(
    tmp_path: Path, journal: list[Call]
) -> None:
    engine = Engine([RecordingSubsystem("firewall", journal)], tmp_path, fake_links)
    client = TestClient(create_app(engine, FixedStatus()))
    assert client.put("/v1/config", json=body(1)).status_code == 200
    first = engine.current
    fip = {"floating_ip": "172.24.4.9", "fixed_ip": "10.0.0.5"}
    assert client.put("/v1/config", json=body(2, floating_ips=[fip])).status_code == 200
    assert first is not None and engine.current is not None
    assert engine.current.firewall is first.firewall
    assert engine.current.floating_ips != first.floating_ips


def test_health_before_any_apply(client: TestClient) -> None:
    health = client.get("/v1/health").json()
    assert health["status"] == "up"
    assert health["generation"] is None
    assert health["last_result"] == "none"


def test_put_applies_and_answers_with_health(client: TestClient, journal: list[Call]) -> None:
    response = client.put("/v1/config", json=body(3))
    assert response.status_code == 200
    assert response.json()["generation"] == 3
    assert response.json()["last_result"] == "applied"
    assert response.json()["router_id"] == "r1"
    assert [name for name, *_ in journal] == list(APPLY_ORDER)
    assert client.get("/v1/health").json()["last_apply_duration_s"] >= 0


def test_config_is_returned_with_secrets_redacted(client: TestClient) -> None:
    assert client.get("/v1/config").status_code == 404
    client.put("/v1/config", json=body(1))
    response = client.get("/v1/config")
    assert response.status_code == 200
    assert PROXY_KEY not in response.text
    allocation = response.json()["networks"][2]["allocations"][0]
    assert allocation["instance"]["signature"] == "*" * 10
    assert response.json()["generation"] == 1


def test_wrong_content_type_is_415(client: TestClient, journal: list[Call]) -> None:
    for headers in ({"content-type": "text/plain"}, {}):
        response = client.put("/v1/config", content=json.dumps(body(1)), headers=headers)
        assert response.status_code == 415, headers
    assert journal == []


def test_json_with_charset_is_accepted(client: TestClient) -> None:
    response = client.put(
        "/v1/config",
        content=json.dumps(body(1)),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


def test_malformed_json_is_422(client: TestClient, journal: list[Call]) -> None:
    response = client.put(
        "/v1/config", content=b'{"generation": 1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]
    assert journal == []


def test_invalid_document_lists_every_pydantic_problem(
    client: TestClient, journal: list[Call]
) -> None:
    doc = body(1)
    doc["generation"] = 0
    doc["interfaces"][1]["mac"] = "not-a-mac"
    doc["surprise"] = True
    response = client.put("/v1/config", json=doc)
    assert response.status_code == 422
    locs = {tuple(problem["loc"]) for problem in response.json()["detail"]}
    assert locs == {("generation",), ("interfaces", 1, "mac"), ("surprise",)}
    assert journal == []


def test_cross_reference_problems_are_422_too(client: TestClient, journal: list[Call]) -> None:
    doc = body(1)
    doc["networks"][1]["interface_mac"] = "fa:16:3e:99:99:99"
    doc["floating_ips"] = [{"floating_ip": "10.9.9.9", "fixed_ip": "10.5.0.5"}]
    response = client.put("/v1/config", json=doc)
    assert response.status_code == 422
    locs = {tuple(problem["loc"]) for problem in response.json()["detail"]}
    assert ("networks", 1, "interface_mac") in locs
    assert ("floating_ips", 0, "floating_ip") in locs
    assert ("floating_ips", 0, "fixed_ip") in locs
    assert journal == []


def test_secret_in_an_invalid_document_is_not_echoed(client: TestClient) -> None:
    doc = body(1)
    doc["metadata"]["upstream_url"] = "not a url"
    response = client.put("/v1/config", json=doc)
    assert response.status_code == 422
    assert PROXY_KEY not in response.text


def test_older_generation_is_409(client: TestClient) -> None:
    assert client.put("/v1/config", json=body(5)).status_code == 200
    response = client.put("/v1/config", json=body(4))
    assert response.status_code == 409
    assert response.json()["applied_generation"] == 5
    assert response.json()["requested_generation"] == 4


def test_same_document_twice_is_200_and_changes_nothing(
    client: TestClient, journal: list[Call]
) -> None:
    client.put("/v1/config", json=body(2))
    journal.clear()
    response = client.put("/v1/config", json=body(2))
    assert response.status_code == 200
    assert response.json()["last_result"] == "unchanged"
    assert journal == []


def test_failed_apply_is_500_with_step_and_previous_config_kept(
    client: TestClient, failing: dict[str, set[int]]
) -> None:
    failing["ra"].add(2)
    client.put("/v1/config", json=body(1))
    response = client.put("/v1/config", json=body(2))
    assert response.status_code == 500
    assert response.json() == {"step": "ra", "detail": "refused generation 2"}
    assert client.get("/v1/config").json()["generation"] == 1
    health = client.get("/v1/health").json()
    assert (health["generation"], health["last_result"]) == (1, "failed")


def test_interfaces_and_counters_come_from_the_status_reader(client: TestClient) -> None:
    interfaces = client.get("/v1/interfaces").json()
    assert interfaces == [
        {
            "name": "eth0",
            "mac": "fa:16:3e:00:00:01",
            "addresses": ["fdca::5/64"],
            "mtu": 1500,
            "state": "up",
            "port_id": "port-0",
        }
    ]
    counters = client.get("/v1/counters").json()
    assert counters["conntrack_entries"] == 7
    assert counters["rules"][0]["packets"] == 5
    assert counters["interfaces"][0]["tx_bytes"] == 4


def test_service_refuses_to_serve_without_mutual_tls(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        service.main(["--listen", "127.0.0.1", "--cert", "appliance.pem"])
    assert info.value.code == 2
    message = capsys.readouterr().err
    assert "missing --key, --ca" in message
    assert "mutual TLS" in message


def test_service_refuses_missing_certificate_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(tmp_path / name) for name in ("a.pem", "a.key", "ca.pem")]
    with pytest.raises(SystemExit):
        service.main(["--cert", files[0], "--key", files[1], "--ca", files[2]])
    assert files[0] in capsys.readouterr().err


@pytest.fixture
def probed(tmp_path: Path) -> tuple[TestClient, list[Call], FakeProbe]:
    engine, journal, probe = probed_engine(tmp_path)
    return TestClient(create_app(engine, FixedStatus())), journal, probe


def test_health_reports_drift_and_the_config_digest(
    probed: tuple[TestClient, list[Call], FakeProbe],
) -> None:
    client, _, probe = probed
    before = client.get("/v1/health").json()
    assert (before["drift"], before["config_digest"]) == (None, None)
    put = client.put("/v1/config", json=body(3)).json()
    assert put["drift"] is False
    health = recorded_health(client)
    assert health["config_digest"] == config_digest(document(3, proxy_key=PROXY_KEY))
    assert health["drift"] is False
    probe.state = "rule flushed"
    assert client.get("/v1/health").json()["drift"] is True
    # The same document again changes nothing, so it measures rather than assumes.
    assert client.put("/v1/config", json=body(3)).json()["drift"] is True


def test_reapply_repairs_drift_through_every_step(
    probed: tuple[TestClient, list[Call], FakeProbe],
) -> None:
    client, journal, probe = probed
    client.put("/v1/config", json=body(3))
    recorded_health(client)
    probe.state = "address deleted"
    assert client.get("/v1/health").json()["drift"] is True
    journal.clear()
    response = client.post("/v1/reapply")
    assert response.status_code == 200
    assert (response.json()["generation"], response.json()["drift"]) == (3, False)
    assert [(name, desired, previous) for name, desired, previous, _ in journal] == [
        (name, 3, None) for name in APPLY_ORDER
    ]
    assert recorded_health(client)["drift"] is False


def recorded_health(client: TestClient) -> dict[str, Any]:
    """GET /v1/health once the last apply is recorded (saved, digested, fingerprinted): that
    happens just after the answer, off the apply's path."""
    deadline = time.monotonic() + 5
    while (health := client.get("/v1/health").json())["drift"] is None:
        assert time.monotonic() < deadline, "the apply was never recorded"
        time.sleep(0.01)
    return health


def test_reapply_before_any_document_is_404(
    probed: tuple[TestClient, list[Call], FakeProbe],
) -> None:
    client, journal, _ = probed
    response = client.post("/v1/reapply")
    assert response.status_code == 404
    assert journal == []


def test_failed_reapply_is_500_with_the_step(tmp_path: Path) -> None:
    fail: dict[str, set[int]] = {"firewall": set()}
    engine, _, _ = probed_engine(tmp_path, fail)
    client = TestClient(create_app(engine, FixedStatus()))
    client.put("/v1/config", json=body(7))
    fail["firewall"].add(7)
    response = client.post("/v1/reapply")
    assert response.status_code == 500
    assert response.json() == {"step": "firewall", "detail": "refused generation 7"}


def tls_files(tmp_path: Path) -> list[str]:
    files = [tmp_path / name for name in ("a.pem", "a.key", "ca.pem")]
    for path in files:
        path.write_text("pem")
    return ["--cert", str(files[0]), "--key", str(files[1]), "--ca", str(files[2])]


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--heartbeat", "[fdca::1]:5555"], "--heartbeat needs --instance-id and --heartbeat-key"),
        (["--heartbeat", "10.0.0.1:5555", "--instance-id", "i1"], "needs --heartbeat-key-file"),
        (["--heartbeat", "fdca::1:5555"], "in brackets"),
        (["--heartbeat", "10.0.0.1"], "not HOST:PORT"),
        (["--heartbeat", "10.0.0.1:70000"], "not HOST:PORT"),
        (
            [
                "--heartbeat",
                "10.0.0.1:1",
                "--instance-id",
                "i1",
                "--heartbeat-key-file",
                "k",
                "--drift-check-interval",
                "0",
            ],
            "--drift-check-interval must be above 0",
        ),
    ],
)
def test_heartbeat_flags_are_checked_at_startup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as info:
        service.main([*tls_files(tmp_path), *extra])
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_empty_or_unreadable_heartbeat_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"\n")
    for key_file, complaint in ((empty, "is empty"), (tmp_path / "absent", "cannot read")):
        with pytest.raises(SystemExit):
            service.main(
                [
                    *tls_files(tmp_path),
                    "--heartbeat", "127.0.0.1:5555",
                    "--instance-id", "i1",
                    "--heartbeat-key-file", str(key_file),
                ]
            )  # fmt: skip
        assert complaint in capsys.readouterr().err


def test_heartbeat_settings_from_valid_flags(tmp_path: Path) -> None:
    key_file = tmp_path / "hb.key"
    key_file.write_text("00ff10\n")
    parser = service.build_parser()
    args = parser.parse_args(
        [
            "--heartbeat", "[fdca:3ba5::1]:5555",
            "--instance-id", "i1",
            "--heartbeat-key-file", str(key_file),
            "--heartbeat-interval", "0.5",
            "--drift-check-interval", "12",
        ]
    )  # fmt: skip
    assert service.heartbeat_settings(parser, args) == service.HeartbeatSettings(
        instance_id="i1",
        target=("fdca:3ba5::1", 5555),
        key=b"\x00\xff\x10",
        interval=0.5,
        drift_check_interval=12.0,
    )
    assert service.heartbeat_settings(parser, parser.parse_args([])) is None


def test_key_file_is_hex_text_or_raw_bytes(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(b"\x00\x01not hex\xff")
    assert service.read_key(raw) == b"\x00\x01not hex\xff"
    text = tmp_path / "hex.key"
    text.write_text("DEADbeef\n")
    assert service.read_key(text) == b"\xde\xad\xbe\xef"


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("192.0.2.1:5555", ("192.0.2.1", 5555)),
        ("[fdca::1]:1", ("fdca::1", 1)),
        ("orchestrator.example:65535", ("orchestrator.example", 65535)),
    ],
)
def test_heartbeat_target_parsing(text: str, target: tuple[str, int]) -> None:
    assert service.parse_target(text) == target


class Message(dict[str, Any]):
    """A pyroute2 message as the status readers use it: attributes by name, and an index."""


def test_interfaces_and_their_counters_name_the_neutron_port_of_their_mac() -> None:
    links = [
        Message(index=1, IFLA_IFNAME="eth1", IFLA_ADDRESS="FA:16:3E:00:00:02", IFLA_MTU=1450),
        Message(index=2, IFLA_IFNAME="lo", IFLA_ADDRESS="00:00:00:00:00:00", IFLA_MTU=65536),
    ]
    addrs = [Message(index=1, IFA_ADDRESS="10.0.0.1", prefixlen=24)]
    ports = {"fa:16:3e:00:00:02": "port-ext"}
    eth1, lo = interfaces_from_netlink(links, addrs, ports)
    assert (eth1.name, eth1.port_id, eth1.addresses) == ("eth1", "port-ext", ["10.0.0.1/24"])
    assert lo.port_id is None
    assert [c.port_id for c in link_counters_from_netlink(links, ports)] == ["port-ext", None]
