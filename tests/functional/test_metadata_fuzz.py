"""Fuzzing the real metadata proxy over real sockets: no 500, no hang, no thread growth.

The proxy (``MetadataServer``, the appliance's own) listens on loopback in this process with
a table in which 127.0.0.1 is a Nova instance; a test double of Nova's metadata API runs in
another process (so this process's threads are the proxy's and pytest's alone) and records
what reaches it. Hypothesis writes raw requests: request lines, targets aimed at other hosts,
header floods, identity headers, lengths, chunked bodies, and clients that dribble, stall or
hang up half-way.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astara.appliance.metadata import MetadataServer
from astara.appliance.metadata_policy import (
    FORWARDED_POST_HEADERS,
    ProxyLimits,
    ProxyNetwork,
    ProxyTable,
    Sender,
)
from astara.drivers.metadata import nova_signature
from astara.testing.nova_metadata import records

pytestmark = [pytest.mark.functional, pytest.mark.security]

LOOPBACK = ip_address("127.0.0.1")
SECRET = "fuzz-secret"  # noqa: S105 (a test value)
SENDER = Sender("net-lo", "instance-fuzz", "project-fuzz", nova_signature(SECRET, "instance-fuzz"))
LIMITS = ProxyLimits(
    max_connections=8,
    client_timeout=0.5,
    upstream_timeout=2.0,
    max_head_bytes=2048,
    refusal_linger=0.2,
)
# Every status the proxy may answer a fuzzed request with; 5xx only for its own bounds.
EXPECTED = {200, 400, 404, 405, 408, 431, 503}
# What may reach the upstream: the allow-list, the proxy's identity, and httpx's own framing.
UPSTREAM_HEADERS = FORWARDED_POST_HEADERS | {
    "host",
    "accept-encoding",
    "connection",
    "content-length",
    "x-forwarded-for",
    "x-instance-id",
    "x-tenant-id",
    "x-instance-id-signature",
}


class Errors(logging.Handler):
    """The proxy's own error log lines: a bug it caught still fails the test."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))


@dataclass
class Bed:
    proxy: MetadataServer
    record: Path
    baseline_threads: int
    errors: Errors

    def threads(self) -> int:
        return len(os.listdir("/proc/self/task"))


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    work = tmp_path_factory.mktemp("metadata-fuzz")
    (work / "secret").write_text(SECRET)
    record = work / "record.jsonl"
    double = subprocess.Popen(
        [
            *(sys.executable, "-m", "astara.testing.nova_metadata"),
            *("--listen", "127.0.0.1", "--secret-file", str(work / "secret")),
            *("--record", str(record)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert double.stdout is not None
    port = int(double.stdout.readline())
    table = ProxyTable(
        router_id="router-fuzz",
        upstream_url=f"http://127.0.0.1:{port}",
        networks=(
            ProxyNetwork(
                id="net-lo",
                subnets=(ip_network("127.0.0.0/8"),),
                local=frozenset({LOOPBACK}),
                senders={LOOPBACK: SENDER},
            ),
        ),
    )
    proxy = MetadataServer("127.0.0.1", 0, table, LIMITS)
    errors = Errors()
    logging.getLogger("astara.appliance.metadata").addHandler(errors)
    proxy.start()
    try:
        # Warm up: the resolver thread exists from the first upstream call on.
        status, _ = exchange(
            proxy.port,
            b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
            close=True,
        )
        assert status == [200]
        yield Bed(proxy, record, len(os.listdir("/proc/self/task")), errors)
    finally:
        logging.getLogger("astara.appliance.metadata").removeHandler(errors)
        proxy.stop()
        double.terminate()
        double.wait(5)


def exchange(
    port: int, request: bytes, close: bool, pieces: int = 1, pause: float = 0.0
) -> tuple[list[int], float]:
    """Send ``request`` (in ``pieces``, ``pause`` apart), half-close if ``close``, read to EOF.

    Returns the statuses answered and the seconds until the proxy closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        size = max(1, -(-len(request) // pieces))
        try:
            for offset in range(0, len(request), size):
                sock.sendall(request[offset : offset + size])
                time.sleep(pause)
            if close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy already answered and closed (a refusal)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    statuses = [
        int(line.split(b" ", 2)[1])
        for line in answer.split(b"\r\n")
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit()
    ]
    return statuses, time.monotonic() - started


TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_!#", max_size=12)
NASTY = st.lists(
    st.sampled_from(
        [*"/.@\\?#%:;&=[]2e5cfFxX \t\r\n\x00\x7f\u00e9", "%2e", "%40", "//", "..", "a"]
    ),
    max_size=30,
).map("".join)
TARGETS = st.one_of(
    st.sampled_from(
        [
            "/openstack/latest/meta_data.json",
            "/latest/meta-data/",
            "/openstack/latest/password",
            "@evil.example:8080/x",
            "@[::1]:5672/",
            "http://evil.example/",
            "//127.0.0.1:1/",
            "/%2e%2e/%2e%2e/",
            "*",
            "/astara-test/bytes/10",
        ]
    ),
    NASTY,
    NASTY.map(lambda text: "/" + text),
)
IDENTITY = [
    "X-Instance-ID",
    "X-Tenant-ID",
    "X-Instance-ID-Signature",
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "X-Metadata-Provider",
    "X-Astara-Router-ID",
]
HEADER_NAMES = st.one_of(st.sampled_from([*IDENTITY, "Host", "Accept", "User-Agent"]), TOKEN)
HEADER_VALUES = st.one_of(st.sampled_from(["other", "10.9.9.9", "ab" * 32]), NASTY)
LENGTHS = st.sampled_from(["-1", "abc", "99999", "0", "3", " 3", "3, 3", "1e3", str(10**40), ""])


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    method = draw(st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "CONNECT"]), TOKEN))
    target = draw(TARGETS)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    if draw(st.booleans()):
        headers.append(("Host", "169.254.169.254"))
    flood = draw(st.sampled_from([0, 0, 0, 200]))
    headers += [(f"X-Flood-{i}", "y" * 20) for i in range(flood)]
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "declared", "chunked", "none"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "declared":
        headers.append(("Content-Length", draw(LENGTHS)))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8", "replace") + b"\r\n" + body


# Well-formed requests, so that a second, fuzzed one often reaches a kept-alive connection.
WELL_FORMED = st.sampled_from(
    [
        f"{method} /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for method in ("GET", "HEAD")
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool, int, float]:
    """One request or two pipelined, maybe cut short, sent whole or dribbled."""
    first = draw(st.one_of(WELL_FORMED, one_request()))
    request = first + draw(st.one_of(st.just(b""), one_request()))
    # Clients that hang up half-way, stop sending (the proxy must time them out), or dribble.
    if draw(st.sampled_from([False, False, False, True])):
        request = request[: max(1, len(request) // 10)]
    close = draw(st.sampled_from([True, True, True, False]))
    pieces, pause = draw(st.sampled_from([(1, 0.0), (1, 0.0), (3, 0.05), (8, 0.02)]))
    return request, close, pieces, pause


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=requests())
def test_no_request_gets_a_500_hangs_or_grows_threads(bed: Bed, case: tuple) -> None:
    request, close, pieces, pause = case
    statuses, took = exchange(bed.proxy.port, request, close, pieces, pause)
    assert set(statuses) <= EXPECTED, (statuses, request)
    # Whatever the client does, the proxy is done within its client and upstream deadlines.
    bound = LIMITS.client_timeout * 2 + LIMITS.upstream_timeout + LIMITS.refusal_linger
    assert took < pieces * pause + bound + 1
    assert bed.threads() <= bed.baseline_threads, "the proxy grew threads"
    assert bed.errors.seen == [], request


def test_what_reached_upstream_carried_the_proxy_identity_only(bed: Bed) -> None:
    # Runs after the fuzz (file order is not relied on: it sends its own forged request too).
    forged = b"".join(f"{name}: forged\r\n".encode() for name in IDENTITY)
    statuses, _ = exchange(
        bed.proxy.port,
        b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n" + forged + b"\r\n",
        close=True,
    )
    assert statuses == [200]
    seen = records(bed.record)
    assert seen
    for entry in seen:
        assert {name for name, _ in entry.headers} <= UPSTREAM_HEADERS, entry
        assert entry.header("x-instance-id") == [SENDER.instance_id]
        assert entry.header("x-tenant-id") == [SENDER.project_id]
        assert entry.header("x-instance-id-signature") == [SENDER.signature]
        assert entry.header("x-forwarded-for") == ["127.0.0.1"]
        assert entry.method in {"GET", "HEAD", "POST"}
        assert not entry.path.startswith("//") and "@" not in entry.path


def test_connections_beyond_the_bound_get_503_at_once(bed: Bed) -> None:
    idle = [socket.create_connection(("127.0.0.1", bed.proxy.port)) for _ in range(40)]
    try:
        started = time.monotonic()
        statuses, _ = exchange(bed.proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", close=True)
        assert statuses == [503]
        assert time.monotonic() - started < LIMITS.client_timeout
        assert bed.threads() <= bed.baseline_threads
    finally:
        for sock in idle:
            sock.close()
