"""The metadata proxy's decisions: the upstream URL, the headers, who is asking, the limits."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astara.appliance import metadata_policy as policy
from astara.wire.document import ApplianceConfig

pytestmark = pytest.mark.unit

BASE = "http://[fdca:3ba5:a17a:acda::1]:8775"
SENDER = policy.Sender("net-a", "instance-a", "project-a", "5e" * 32)
SOURCE = ipaddress.ip_address("10.0.0.5")

# Every way a request target has been seen to name another host, climb out of the base path,
# or smuggle something into the request line: each must be refused before any upstream call.
SSRF_TARGETS = [
    "@evil.example:8080/x",
    "@[fdca:3ba5:a17a:acda::1]:5672/",
    "http://evil.example/x",
    "https://evil.example/x",
    "evil.example:80",
    "//evil.example/x",
    "///evil.example/x",
    "/@evil.example/x",
    "/x@evil.example",
    "/x\\@evil.example",
    "\\\\evil.example\\x",
    "/\\evil.example/x",
    "/x#@evil.example/",
    "/x?next=@evil.example",
    "/%40evil.example",
    "/%5cevil.example",
    "/%23frag",
    "/%2e%2e/%2e%2e/admin",
    "/%2E%2E/admin",
    "/..%2f..%2fadmin",
    "/x/%2e/y",
    "/x%00y",
    "/x%0d%0aHost:%20evil.example",
    "/x\r\nHost: evil.example",
    "/x y",
    "/x\ty",
    "/caf\u00e9",
    "*",
    "",
]


@pytest.mark.security
@pytest.mark.parametrize("target", SSRF_TARGETS)
def test_every_ssrf_form_is_refused_with_400(target: str) -> None:
    with pytest.raises(policy.Refusal) as info:
        policy.upstream_url(BASE, target)
    assert info.value.status == 400
    assert info.value.reason


@pytest.mark.security
@settings(max_examples=500, deadline=None, database=None)
@given(target=st.text(alphabet=st.sampled_from("/.@\\?#%:2e5cfF40a[]x \r\n\x00"), max_size=24))
def test_whatever_the_target_the_host_and_base_path_are_the_configured_ones(target: str) -> None:
    try:
        url = policy.upstream_url(BASE + "/prefix/", target)
    except policy.Refusal as refusal:
        assert refusal.status == 400
        return
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "[fdca:3ba5:a17a:acda::1]:8775")
    assert parts.path.startswith("/prefix/") and not parts.fragment
    assert ".." not in parts.path.split("/")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/openstack/latest/meta_data.json", "/openstack/latest/meta_data.json"),
        ("/latest/meta-data/", "/latest/meta-data/"),
        ("/openstack/./latest/../latest/meta_data.json", "/openstack/latest/meta_data.json"),
        ("/../../../etc/passwd", "/etc/passwd"),
        ("/latest/meta-data/?x=1&y=%2F", "/latest/meta-data/?x=1&y=%2F"),
        ("/", "/"),
    ],
)
def test_paths_are_resolved_under_the_base_path(target: str, expected: str) -> None:
    assert policy.upstream_url(BASE, target) == BASE + expected
    assert policy.upstream_url(BASE + "/nova/", target) == BASE + "/nova" + expected


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"])
def test_only_get_head_and_post_are_served(method: str) -> None:
    with pytest.raises(policy.Refusal) as info:
        policy.check_method(method)
    assert info.value.status == 405
    for served in ("GET", "HEAD", "POST"):
        policy.check_method(served)


# Everything a VM could send to claim an identity or steer the upstream request.
VM_HEADERS = [
    ("x-instance-id", "someone-else"),
    ("x-tenant-id", "other-project"),
    ("x-instance-id-signature", "ab" * 32),
    ("x-forwarded-for", "10.0.9.9"),
    ("forwarded", "for=10.0.9.9"),
    ("x-real-ip", "10.0.9.9"),
    ("x-metadata-provider", "lb-1"),
    ("x-metadata-provider-signature", "cd" * 32),
    ("x-astara-router-id", "r-other"),
    ("x-astara-network-id", "net-other"),
    ("x-astara-instance-signature", "ef" * 32),
    ("x-forwarded-host", "evil.example"),
    ("host", "evil.example"),
    ("authorization", "Basic eDp5"),
    ("x-auth-token", "token"),
    ("cookie", "a=b"),
    ("content-length", "3"),
    ("transfer-encoding", "chunked"),
    ("connection", "x-instance-id"),
    ("via", "1.1 evil"),
]
KEPT = [
    ("accept", "application/json"),
    ("user-agent", "Cloud-Init/24.1"),
    ("if-none-match", '"v1"'),
    ("if-modified-since", "Tue, 01 Jul 2025 00:00:00 GMT"),
    ("accept-language", "en"),
]


@pytest.mark.security
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_no_identity_a_vm_sends_reaches_upstream(method: str) -> None:
    sent = [*VM_HEADERS, *KEPT, ("content-type", "text/plain")]
    headers = policy.forwarded_headers(method, sent, SENDER, SOURCE)
    proxy_set = [
        ("X-Forwarded-For", "10.0.0.5"),
        ("X-Instance-ID", "instance-a"),
        ("X-Tenant-ID", "project-a"),
        ("X-Instance-ID-Signature", "5e" * 32),
    ]
    post_only = [("content-type", "text/plain")] if method == "POST" else []
    assert headers == [*KEPT, *post_only, *proxy_set]


def test_answer_headers_are_allow_listed() -> None:
    answer = [
        ("Content-Type", "application/json"),
        ("ETag", '"v1"'),
        ("Last-Modified", "x"),
        ("Cache-Control", "no-cache"),
        ("Set-Cookie", "a=b"),
        ("Location", "http://evil.example/"),
        ("Server", "nova"),
        ("Content-Length", "99"),
        ("Connection", "close"),
    ]
    assert [name for name, _ in policy.passed_headers(answer)] == [
        "Content-Type",
        "ETag",
        "Last-Modified",
        "Cache-Control",
    ]


@pytest.mark.security
def test_lengths_over_the_limit_are_400_before_any_body_is_read() -> None:
    limits = policy.ProxyLimits(max_body_bytes=1020)
    assert policy.declared_length([], limits) == 0
    assert policy.declared_length([("content-length", "1020")], limits) == 1020
    for too_long in ("1021", str(10**30)):
        with pytest.raises(policy.Refusal) as info:
            policy.declared_length([("content-length", too_long)], limits)
        assert info.value.status == 400
        assert "limit" in info.value.reason


def document(**metadata: Any) -> ApplianceConfig:
    def internal(name: str, index: int, mac: str, instance: bool) -> dict[str, Any]:
        allocation: dict[str, Any] = {
            "port_id": f"port-{name}",
            "mac": f"fa:16:3e:00:0{index}:05",
            "ips": [f"10.{index}.0.5", f"fd00:{index}::5"],
            "hostname": f"vm-{name}",
        }
        if instance:
            allocation["instance"] = {
                "instance_id": f"instance-{name}",
                "project_id": f"project-{name}",
                "signature": f"{index}e" * 32,
            }
        return {
            "id": f"net-{name}",
            "kind": "internal",
            "interface_mac": mac,
            "addresses": [f"10.{index}.0.1/24", f"fd00:{index}::1/64"],
            "subnets": [
                {"id": f"{name}4", "cidr": f"10.{index}.0.0/24"},
                {"id": f"{name}6", "cidr": f"fd00:{index}::/64"},
            ],
            "allocations": [
                allocation,
                {
                    "port_id": f"plain-{name}",
                    "mac": f"fa:16:3e:00:0{index}:06",
                    "ips": [f"10.{index}.0.6"],
                    "hostname": f"plain-{name}",
                },
            ],
        }

    return ApplianceConfig.model_validate(
        {
            "generation": 1,
            "router_id": "r-1",
            "hostname": "r-1",
            "interfaces": [{"mac": "fa:16:3e:00:00:01"}, {"mac": "fa:16:3e:00:00:02"}],
            "networks": [
                internal("a", 1, "fa:16:3e:00:00:01", instance=True),
                internal("b", 2, "fa:16:3e:00:00:02", instance=True),
            ],
            **({"metadata": metadata} if metadata else {}),
        }
    )


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_each_instance_is_known_by_its_address_on_its_own_network() -> None:
    table = policy.proxy_table(document(upstream_url=BASE))
    assert table is not None
    a = table.sender(ip("10.1.0.5"), ip("10.1.0.1"))
    assert (a.network_id, a.instance_id, a.project_id) == ("net-a", "instance-a", "project-a")
    assert a.signature == "1e" * 32
    assert table.sender(ip("fd00:2::5"), ip("fd00:2::1")).instance_id == "instance-b"
    mapped = policy.client_ip("::ffff:10.2.0.5"), policy.client_ip("::ffff:10.2.0.1")
    assert table.sender(*mapped).instance_id == "instance-b"
    assert "1e1e" not in repr(a)


@pytest.mark.security
@pytest.mark.parametrize(
    ("source", "local", "why"),
    [
        ("10.1.0.6", "10.1.0.1", "no Nova instance has address 10.1.0.6"),  # a port, no instance
        ("10.1.0.7", "10.1.0.1", "no Nova instance has address 10.1.0.7"),  # no port at all
        ("10.9.0.5", "10.1.0.1", "is not on a network of this router"),
        ("10.2.0.5", "10.1.0.1", "did not come in on network net-b"),  # b's address, a's door
    ],
)
def test_no_instance_no_upstream_call_but_404(source: str, local: str, why: str) -> None:
    table = policy.proxy_table(document(upstream_url=BASE))
    assert table is not None
    with pytest.raises(policy.Refusal, match=why) as info:
        table.sender(ip(source), ip(local))
    assert info.value.status == 404


def test_no_metadata_section_no_proxy() -> None:
    assert policy.proxy_table(document()) is None
    assert policy.proxy_table(None) is None
