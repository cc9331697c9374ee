"""What the metadata proxy forwards, for whom, and what it answers itself: pure decisions.

Trust: a request names no one. Its sender is the port behind its source address on the
network whose subnet holds that address, and the request must have come in on that network's
interface (the packet filter drops spoofed sources before they get here; the local address a
redirected connection lands on says which interface it came in on). Only a Nova instance's
port has an identity: the orchestrator rendered its instance id, project and signature into
the document. Everything a VM sends that could claim an identity is dropped, because the
headers forwarded upstream are built from an allow-list, never by removing known-bad ones.

Upstream URL: the scheme, host and port come from the document alone; a request contributes
only an origin-form path and query (``/path?query``), with dot segments resolved, and nothing
that could name another host (``@``, ``\\``, a scheme, ``//``) or smuggle a control character.
Anything else is refused with 400 before any upstream call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from astara.wire.document import ApplianceConfig

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Headers = list[tuple[str, str]]

# Instances need GET and HEAD; POST is Nova's password service (cloudbase-init posts a
# Windows instance's encrypted password there once).
METHODS = ("GET", "HEAD", "POST")
# Request headers passed upstream; every other one a VM sends is dropped.
FORWARDED_HEADERS = frozenset(
    {"accept", "accept-language", "user-agent", "if-none-match", "if-modified-since"}
)
FORWARDED_POST_HEADERS = FORWARDED_HEADERS | {"content-type"}
# Answer headers passed back to the VM (Content-Length is the proxy's own).
PASSED_RESPONSE_HEADERS = frozenset({"content-type", "etag", "last-modified", "cache-control"})
# Characters that have no business in a metadata path or query: each could make some URL
# parser on the way see another host, or end the request line early.
FORBIDDEN_IN_TARGET = frozenset("@\\#")


@dataclass(frozen=True)
class ProxyLimits:
    """Every bound of the metadata proxy, in one place.

    Idle connections cost no thread (one event loop serves them all); ``max_connections``
    bounds memory and upstream load, and a connection beyond it is answered 503 at once.
    """

    # Connections served at once; each holds at most one upstream request.
    max_connections: int = 64
    # Seconds a client has to send a whole request (an idle keep-alive connection included)
    # and to take a whole answer: slow clients cannot hold a connection longer.
    client_timeout: float = 10.0
    # Seconds Nova has to answer one request, connection included.
    upstream_timeout: float = 10.0
    # Request line and headers together.
    max_head_bytes: int = 8192
    # Request bodies: Nova's password service takes at most 4 x 255 bytes.
    max_body_bytes: int = 1020
    # Answers from Nova (user data is at most 64 KiB; network_data.json grows with ports).
    max_response_bytes: int = 1 << 20
    # Seconds a refused connection stays half-closed, its late bytes read and dropped, so the
    # client reads the answer (closing on unread data makes the kernel send a reset first).
    refusal_linger: float = 1.0
    # Threads resolving the upstream host name, besides the event loop's own thread.
    resolver_threads: int = 1


class Refusal(Exception):
    """A request the proxy answers itself, never forwarding it: an HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# --- who is asking -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    """A Nova instance's port behind the router, and the headers Nova trusts it by."""

    network_id: str
    instance_id: str
    project_id: str
    signature: str = field(repr=False)


@dataclass(frozen=True)
class ProxyNetwork:
    """One internal network as the proxy sees it."""

    id: str
    subnets: tuple[IpNetwork, ...]
    # The router's own addresses there: a redirected connection lands on one of them.
    local: frozenset[IpAddress]
    senders: Mapping[IpAddress, Sender]

    def holds(self, ip: IpAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.subnets)


@dataclass(frozen=True)
class ProxyTable:
    """Everything a request needs: where to forward it and who is asking."""

    router_id: str
    upstream_url: str
    networks: tuple[ProxyNetwork, ...]

    def sender(self, source: IpAddress, local: IpAddress) -> Sender:
        """The instance behind ``source``; Refusal 404 when there is none (no upstream call)."""
        network = next((net for net in self.networks if net.holds(source)), None)
        if network is None:
            raise Refusal(404, f"{source} is not on a network of this router")
        if local not in network.local:
            raise Refusal(404, f"{source} did not come in on network {network.id}")
        found = network.senders.get(source)
        if found is None:
            raise Refusal(404, f"no Nova instance has address {source} on network {network.id}")
        return found


def proxy_table(config: ApplianceConfig | None) -> ProxyTable | None:
    """The proxy's view of a document; None when it asks for no metadata service."""
    if config is None or config.metadata is None:
        return None
    return ProxyTable(
        router_id=config.router_id,
        upstream_url=str(config.metadata.upstream_url),
        networks=tuple(
            ProxyNetwork(
                id=net.id,
                subnets=tuple(subnet.cidr for subnet in net.subnets),
                local=frozenset(address.ip for address in net.addresses),
                senders={
                    ip: Sender(
                        network_id=net.id,
                        instance_id=alloc.instance.instance_id,
                        project_id=alloc.instance.project_id,
                        signature=alloc.instance.signature.get_secret_value(),
                    )
                    for alloc in net.allocations
                    if alloc.instance is not None
                    for ip in alloc.ips
                },
            )
            for net in config.internal_networks()
        ),
    )


def client_ip(host: str) -> IpAddress:
    """An address as a dual-stack socket reports it (IPv4 appears as ::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# --- what is asked -----------------------------------------------------------------------


def check_method(method: str) -> None:
    if method not in METHODS:
        raise Refusal(405, f"method {method} is not served; use {', '.join(METHODS)}")


def upstream_url(base: str, target: str) -> str:
    """The URL a request target is forwarded to: ``base``'s scheme, host and port, its path
    followed by the target's; Refusal 400 for any target that is not a plain origin-form
    path (and query)."""
    if not target.isascii() or not target.isprintable() or " " in target:
        raise Refusal(400, "the request target has spaces, control or non-ASCII characters")
    if not target.startswith("/") or target.startswith("//"):
        raise Refusal(400, "the request target must be a path starting with a single '/'")
    if found := FORBIDDEN_IN_TARGET.intersection(target):
        raise Refusal(400, f"the request target must not contain {''.join(sorted(found))}")
    raw_path, _, query = target.partition("?")
    decoded = unquote(raw_path, errors="replace")
    if not decoded.isprintable() or FORBIDDEN_IN_TARGET.intersection(decoded):
        raise Refusal(400, "the request path encodes a control character, '@', '\\' or '#'")
    # Dot segments are resolved here, so the path can never climb above the base path...
    path = urlsplit(urljoin("http://metadata", raw_path)).path
    # ...and encoded ones are refused: a server that decodes before resolving would climb.
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise Refusal(400, "the request path has an encoded '.' or '..' segment")
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def declared_length(headers: Iterable[tuple[str, str]], limits: ProxyLimits) -> int:
    """The body length a request announces (0 without one); Refusal 400 above the limit.

    The HTTP parser has already refused lengths that are not a single decimal number."""
    lengths = {int(value) for name, value in headers if name == "content-length"}
    declared = max(lengths, default=0)
    if declared > limits.max_body_bytes:
        raise Refusal(
            400, f"Content-Length {declared} is over the {limits.max_body_bytes} byte limit"
        )
    return declared


def forwarded_headers(
    method: str, headers: Iterable[tuple[str, str]], sender: Sender, source: IpAddress
) -> Headers:
    """The headers of the upstream request: the allow-listed ones the VM sent, then the
    identity the proxy vouches for (what Nova's metadata API reads from a Neutron proxy)."""
    allowed = FORWARDED_POST_HEADERS if method == "POST" else FORWARDED_HEADERS
    kept = [(name, value) for name, value in headers if name in allowed]
    return [
        *kept,
        ("X-Forwarded-For", str(source)),
        ("X-Instance-ID", sender.instance_id),
        ("X-Tenant-ID", sender.project_id),
        ("X-Instance-ID-Signature", sender.signature),
    ]


def passed_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """The headers of an upstream answer the VM gets back."""
    return [(name, value) for name, value in headers if name.lower() in PASSED_RESPONSE_HEADERS]
