"""The appliance's first boot: from the bootstrap document to files, link settings and argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astara.appliance.firstboot import (
    ENV_VARIABLE,
    FirstbootError,
    load_bootstrap,
    plan,
    render_environment,
)
from astara.appliance.service import build_parser
from astara.wire.bootstrap import Bootstrap

pytestmark = pytest.mark.unit

KEY_PEM = "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----\n"
HEARTBEAT_KEY = "ab" * 32


def _document(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "instance_id": "inst-1",
        "management": {"mac": "FA:16:3E:00:00:01", "address": "fdca:3ba5::5/64"},
        "ca_pem": "CA",
        "cert_pem": "CERT",
        "key_pem": KEY_PEM,
        "heartbeat": {
            "host": "fdca:3ba5::1",
            "port": 5555,
            "key_hex": HEARTBEAT_KEY,
            "interval": 1.5,
        },
    }
    doc.update(changes)
    return doc


def _bootstrap(**changes: object) -> Bootstrap:
    return load_bootstrap(json.dumps(_document(**changes)).encode())


def test_the_plan_writes_private_files_and_starts_the_appliance_on_the_management_address(
    tmp_path: Path,
) -> None:
    result = plan(_bootstrap(), tmp_path / "etc", tmp_path / "state")
    files = {f.path.relative_to(tmp_path / "etc").as_posix(): f for f in result.files}
    assert set(files) == {"tls/ca.pem", "tls/appliance.pem", "tls/appliance.key", "heartbeat.key"}
    assert all(f.mode == 0o600 for f in result.files)
    assert result.env_file.mode == 0o600
    assert files["tls/appliance.key"].content == KEY_PEM.encode()
    assert files["heartbeat.key"].content == HEARTBEAT_KEY.encode()

    args = build_parser().parse_args(list(result.argv))
    assert args.listen == "fdca:3ba5::5"
    assert args.port == 5000
    assert args.cert == tmp_path / "etc/tls/appliance.pem"
    assert args.key == tmp_path / "etc/tls/appliance.key"
    assert args.ca == tmp_path / "etc/tls/ca.pem"
    assert args.state_dir == tmp_path / "state"
    assert args.instance_id == "inst-1"
    assert args.set_hostname  # a VM's name is its own to set
    assert args.heartbeat == ("fdca:3ba5::1", 5555)
    assert args.heartbeat_key_file == tmp_path / "etc/heartbeat.key"
    assert args.heartbeat_interval == 1.5  # the bootstrap's, not the default
    assert args.drift_check_interval == 30.0

    env = result.env_file.content.decode()
    assert env == f"{ENV_VARIABLE}={' '.join(result.argv)}\n"
    assert KEY_PEM.splitlines()[1] not in env


def test_the_management_link_is_found_by_mac_with_its_prefix(tmp_path: Path) -> None:
    link = plan(_bootstrap(), tmp_path, tmp_path).link
    assert (link.mac, link.address, link.prefixlen) == ("fa:16:3e:00:00:01", "fdca:3ba5::5", 64)
    assert link.gateway is None


def test_a_management_gateway_becomes_the_management_default_route(tmp_path: Path) -> None:
    doc = _bootstrap(
        management={"mac": "fa:16:3e:00:00:01", "address": "10.9.0.5/24", "gateway": "10.9.0.1"},
        heartbeat={"host": "192.0.2.7", "port": 5555, "key_hex": HEARTBEAT_KEY},
    )
    result = plan(doc, tmp_path, tmp_path)
    assert result.link.gateway == "10.9.0.1"
    assert build_parser().parse_args(list(result.argv)).heartbeat == ("192.0.2.7", 5555)


def test_without_heartbeats_no_key_file_and_no_heartbeat_flags(tmp_path: Path) -> None:
    result = plan(_bootstrap(heartbeat=None, api_port=8443), tmp_path, tmp_path)
    assert all(f.path.name != "heartbeat.key" for f in result.files)
    args = build_parser().parse_args(list(result.argv))
    assert args.heartbeat is None and args.port == 8443


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"#cloud-config\n", "not a valid bootstrap document"),
        (json.dumps(_document(cert_pem="")).encode(), "cert_pem"),
        (json.dumps(_document(management={"mac": "nope", "address": "::1/64"})).encode(), "mac"),
        (json.dumps(_document(surprise=1)).encode(), "surprise"),
        (b" " * 70000, "more than"),
    ],
)
def test_an_invalid_document_is_refused_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(FirstbootError, match=message):
        load_bootstrap(data)


def test_the_error_never_echoes_the_private_key() -> None:
    doc = _document(key_pem=[KEY_PEM], instance_id="bad id with spaces")
    with pytest.raises(FirstbootError) as caught:
        load_bootstrap(json.dumps(doc).encode())
    assert "instance_id" in str(caught.value) and "key_pem" in str(caught.value)
    assert "SECRET-KEY-MATERIAL" not in str(caught.value)


def test_a_word_the_unit_would_split_or_expand_is_refused() -> None:
    assert render_environment(["--heartbeat", "[fdca::1]:5555"]).endswith(b"[fdca::1]:5555\n")
    for word in ("two words", "$HOME", 'quo"te', ""):
        with pytest.raises(FirstbootError):
            render_environment(["--listen", word])
