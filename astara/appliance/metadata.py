"""The metadata proxy: instances' 169.254.169.254 requests, forwarded with their identity.

The packet filter redirects instances' metadata traffic to METADATA_PORT here. The proxy
finds the instance's network from its source address, then forwards the request upstream
with headers naming the instance, its network and this router, signed when a shared secret
is configured. The routing table is an immutable value swapped on each apply, so updates
never restart the listening socket.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.wire.defaults import METADATA_PORT
from astara.wire.document import ApplianceConfig

LOG = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Headers that describe one hop, or that only the proxy may set (an instance must not forge them).
DROPPED_REQUEST_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-forwarded-for",
        "x-astara-network-id",
        "x-astara-router-id",
        "x-astara-instance-signature",
    }
)
PASSED_RESPONSE_HEADERS = ("content-type", "etag", "last-modified", "cache-control")


@dataclass(frozen=True)
class ProxyTable:
    """Everything a request needs: where to forward it and how to name its sender."""

    router_id: str
    upstream_url: str
    networks: tuple[tuple[IpNetwork, str], ...]
    secret: str | None = field(default=None, repr=False)

    def network_for(self, ip: IpAddress) -> str | None:
        return next(
            (nid for net, nid in self.networks if ip.version == net.version and ip in net), None
        )


def proxy_table(config: ApplianceConfig | None) -> ProxyTable | None:
    """The proxy's view of a document; None when it asks for no metadata service."""
    if config is None or config.metadata is None:
        return None
    secret = config.metadata.shared_secret
    return ProxyTable(
        router_id=config.router_id,
        upstream_url=str(config.metadata.upstream_url).rstrip("/"),
        networks=tuple(
            (subnet.cidr, net.id) for net in config.internal_networks() for subnet in net.subnets
        ),
        secret=secret.get_secret_value() if secret is not None else None,
    )


def instance_signature(secret: str, instance_ip: str) -> str:
    return hmac.new(secret.encode(), instance_ip.encode(), hashlib.sha256).hexdigest()


def forward_headers(table: ProxyTable, instance_ip: str, network_id: str) -> dict[str, str]:
    headers = {
        "X-Forwarded-For": instance_ip,
        "X-Astara-Network-ID": network_id,
        "X-Astara-Router-ID": table.router_id,
    }
    if table.secret is not None:
        headers["X-Astara-Instance-Signature"] = instance_signature(table.secret, instance_ip)
    return headers


def client_ip(host: str) -> IpAddress:
    """The sender's address; IPv4 senders on a dual-stack socket appear as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, table: ProxyTable, timeout: float = 10.0) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.table = table
        self.client = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        super().__init__((host, port), _ProxyHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # One socket for both families: instances mostly ask over IPv4.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def server_close(self) -> None:
        super().server_close()
        self.client.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: MetadataServer
    protocol_version = "HTTP/1.1"
    server_version = "astara-metadata"
    sys_version = ""

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        table = self.server.table
        ip = client_ip(self.client_address[0])
        network_id = table.network_for(ip)
        if network_id is None:
            self._answer(403, b"Forbidden: unknown source\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in DROPPED_REQUEST_HEADERS
        }
        headers.update(forward_headers(table, str(ip), network_id))
        try:
            upstream = self.server.client.request(
                self.command, table.upstream_url + self.path, headers=headers, content=body
            )
        except httpx.HTTPError as exc:
            LOG.warning("metadata upstream failed for %s: %s", ip, type(exc).__name__)
            self._answer(502, b"Bad Gateway: metadata service unreachable\n")
            return
        passed = {k: upstream.headers[k] for k in PASSED_RESPONSE_HEADERS if k in upstream.headers}
        self._answer(upstream.status_code, upstream.content, passed)

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "text/plain"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines only: headers (which may carry signatures) are never logged.
        LOG.debug("metadata %s " + format, self.client_address[0], *args)


class MetadataSubsystem:
    """Runs the proxy while the document has a metadata section; updates keep the socket."""

    name = "metadata"

    def __init__(self, host: str = "::", port: int = METADATA_PORT) -> None:
        self.host = host
        self.port = port
        self._server: MetadataServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def server(self) -> MetadataServer | None:
        return self._server

    def apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        table = proxy_table(desired)
        if table is None:
            self.stop()
        elif self._server is not None:
            self._server.table = table
        else:
            try:
                self._server = MetadataServer(self.host, self.port, table)
            except OSError as exc:
                raise ApplyStepError(
                    self.name, f"cannot listen on port {self.port}: {exc}"
                ) from exc
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="metadata-proxy", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
