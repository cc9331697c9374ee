"""The metadata proxy: instances' 169.254.169.254 requests, forwarded to Nova with their identity.

The packet filter redirects instances' metadata traffic to METADATA_PORT here (and drops
packets whose source address does not belong behind the interface they came in on). What is
forwarded, for whom, and what is refused is decided in ``metadata_policy``; this module is the
thin edge: a socket, an event loop, HTTP/1.1 framing (h11) and the upstream client (httpx).

One event loop on one thread serves every connection, so idle or slow clients cost no
threads; the host name of Nova's API is resolved on at most ``resolver_threads`` more. Every
wait has a deadline and every buffer a size (``ProxyLimits``), and the loop is not the
appliance API's, so a flood of metadata requests cannot stall the API. The proxy table is an
immutable value swapped on each apply, so updates never restart the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.cookiejar import DefaultCookiePolicy

import h11
import httpx

from astara.appliance.metadata_policy import (
    Headers,
    ProxyLimits,
    ProxyTable,
    Refusal,
    check_method,
    client_ip,
    declared_length,
    forwarded_headers,
    passed_headers,
    proxy_table,
    upstream_url,
)
from astara.appliance.subsystem import ApplyStepError, LinkMap
from astara.wire.defaults import METADATA_PORT
from astara.wire.document import ApplianceConfig

LOG = logging.getLogger(__name__)

READ_SIZE = 4096
BACKLOG = 128
# Statuses whose answers never carry a body.
BODILESS = frozenset({204, 304})
STATUS_PHRASES = frozenset(int(status) for status in HTTPStatus)


def _phrase(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode() if status in STATUS_PHRASES else b""


def _text_answer(status: int, text: str) -> tuple[Headers, bytes]:
    body = f"{HTTPStatus(status).phrase}: {text}\n".encode()
    return [("Content-Type", "text/plain; charset=utf-8")], body


def _encode(
    http: h11.Connection, status: int, headers: Headers, body: bytes, head: bool = False
) -> bytes:
    """One whole answer; no body for HEAD requests and the statuses that take none."""
    if status in BODILESS:
        body = b""
    elif not any(name.lower() == "content-length" for name, _ in headers):
        headers = [*headers, ("Content-Length", str(len(body)))]
    data = http.send(h11.Response(status_code=status, headers=headers, reason=_phrase(status)))
    if body and not head:
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
    return (data or b"") + (http.send(h11.EndOfMessage()) or b"")


def _busy_answer() -> bytes:
    """What a connection beyond max_connections gets, before it is closed."""
    headers, body = _text_answer(503, "too many metadata connections, try again")
    return _encode(h11.Connection(h11.SERVER), 503, [*headers, ("Connection", "close")], body)


class MetadataServer:
    """The proxy's listening socket and the event loop thread serving it."""

    def __init__(
        self, host: str, port: int, table: ProxyTable, limits: ProxyLimits | None = None
    ) -> None:
        self.table = table
        self.limits = limits or ProxyLimits()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket for both families: instances mostly ask over IPv4.
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._sock.bind((host, port))
            self._sock.listen(BACKLOG)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._busy = _busy_answer()
        self._active = 0
        self._lingering = 0
        self._connections: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            ThreadPoolExecutor(self.limits.resolver_threads, thread_name_prefix="metadata-dns")
        )
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metadata-proxy", daemon=True)

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
        finally:
            self._loop.close()
            self._sock.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        limits = self.limits
        client = httpx.AsyncClient(
            timeout=limits.upstream_timeout,
            limits=httpx.Limits(max_connections=limits.max_connections),
            trust_env=False,
            follow_redirects=False,
        )
        # One client serves every instance: a cookie Nova set for one must never go with
        # another's requests.
        client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        server = await asyncio.start_server(
            lambda reader, writer: self._accept(reader, writer, client), sock=self._sock
        )
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await client.aclose()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: httpx.AsyncClient
    ) -> None:
        if self._active >= self.limits.max_connections:
            await self._turn_away(reader, writer)
            return
        task = asyncio.current_task()
        if task is not None:  # always, in a connection callback: kept to be cancelled at stop
            self._connections.add(task)
        self._active += 1
        try:
            await _Connection(self, reader, writer, client).serve()
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or took too long to read its answer
        except Exception:
            LOG.exception("metadata proxy: unexpected error on a connection")
        finally:
            self._active -= 1
            self._connections.discard(task)
            writer.close()

    async def _turn_away(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """503 at once: it never waits for a slot. It lingers like any refusal, but only as
        many at a time as there are slots; beyond that it is closed straight away."""
        writer.write(self._busy)
        self._lingering += 1
        try:
            if self._lingering <= self.limits.max_connections:
                await _linger(reader, writer, self.limits.refusal_linger)
        finally:
            self._lingering -= 1
            writer.close()


async def _linger(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
) -> None:
    """Half-close after a refusal and drop what the client still sends, for ``seconds`` at
    most, so that the answer is read before the connection goes."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        writer.write_eof()
        async with asyncio.timeout(seconds):
            while await reader.read(READ_SIZE):
                pass


class _Connection:
    """One client connection: requests in order (keep-alive), each within the deadlines."""

    def __init__(
        self,
        server: MetadataServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: httpx.AsyncClient,
    ) -> None:
        self.limits = server.limits
        self.server = server
        self.reader = reader
        self.writer = writer
        self.client = client
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        self.head = False  # whether the request being answered is a HEAD
        self.source = client_ip(writer.get_extra_info("peername")[0])
        self.local = client_ip(writer.get_extra_info("sockname")[0])

    async def serve(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.limits.client_timeout):
                    request = await self._read_request()
                if request is None:
                    return
                status, headers, body = await self._answer(*request)
            except TimeoutError:
                if self.http.their_state is h11.IDLE and not self.http.trailing_data[0]:
                    return  # an idle keep-alive connection: just close it
                await self._refuse(Refusal(408, "the request took too long to arrive"))
                return
            except h11.RemoteProtocolError as exc:
                # h11 hints 501 for transfer codings it does not know: still the client's error.
                hint = exc.error_status_hint
                await self._refuse(Refusal(hint if 400 <= hint < 500 else 400, str(exc)))
                return
            except Refusal as refusal:
                await self._refuse(refusal)
                return
            await self._send(status, headers, body)
            if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
                return
            self.http.start_next_cycle()

    async def _event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(READ_SIZE))
            else:
                return event  # type: ignore[return-value]

    async def _read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body, or None when the client closed the connection.

        The method, target and length are checked before the body is read; a client that
        closes in the middle of a request is an h11.RemoteProtocolError."""
        self.head = False
        request = await self._event()
        if not isinstance(request, h11.Request):
            return None  # from IDLE the only other event is ConnectionClosed
        self.head = request.method == b"HEAD"
        check_method(request.method.decode("ascii"))
        upstream_url(self.server.table.upstream_url, request.target.decode("ascii"))
        declared_length(_text_headers(request.headers), self.limits)
        body = bytearray()
        event = await self._event()
        while isinstance(event, h11.Data):  # until EndOfMessage
            body += event.data
            if len(body) > self.limits.max_body_bytes:  # chunked bodies announce no length
                raise Refusal(400, f"the body is over the {self.limits.max_body_bytes} byte limit")
            event = await self._event()
        return request, bytes(body)

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, Headers, bytes]:
        """Forward the request for the instance behind its source address."""
        table = self.server.table  # one table for the whole request, even across an apply
        method = request.method.decode("ascii")
        sender = table.sender(self.source, self.local)
        url = upstream_url(table.upstream_url, request.target.decode("ascii"))
        headers = forwarded_headers(method, _text_headers(request.headers), sender, self.source)
        try:
            async with asyncio.timeout(self.limits.upstream_timeout):
                status, answer_headers, content = await self._upstream(
                    method, url, headers, body if method == "POST" else None
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            LOG.warning(
                "router %s: metadata for instance %s: upstream failed: %s",
                table.router_id,
                sender.instance_id,
                type(exc).__name__,
            )
            raise Refusal(
                504 if isinstance(exc, TimeoutError | httpx.TimeoutException) else 502,
                "the metadata service did not answer",
            ) from None
        if status == 403:
            LOG.warning(
                "router %s: Nova refused the signature of instance %s: is "
                "metadata_proxy_shared_secret the same for Nova and Astara?",
                table.router_id,
                sender.instance_id,
            )
        if status >= 500:
            LOG.warning("router %s: metadata upstream answered %d", table.router_id, status)
            raise Refusal(502, f"the metadata service failed ({status})")
        LOG.debug(
            "router %s: metadata %s %s for instance %s: %d",
            table.router_id,
            method,
            request.target.decode("ascii"),
            sender.instance_id,
            status,
        )
        return status, answer_headers, content

    async def _upstream(
        self, method: str, url: str, headers: Headers, body: bytes | None
    ) -> tuple[int, Headers, bytes]:
        limit = self.limits.max_response_bytes
        async with self.client.stream(method, url, headers=headers, content=body) as reply:
            content = bytearray()
            async for chunk in reply.aiter_bytes():
                content += chunk
                if len(content) > limit:
                    raise Refusal(502, f"the metadata answer is over {limit} bytes")
            passed = passed_headers(reply.headers.multi_items())
            if method == "HEAD" and "content-length" in reply.headers:
                passed.append(("Content-Length", reply.headers["content-length"]))
            return reply.status_code, passed, bytes(content)

    async def _refuse(self, refusal: Refusal) -> None:
        """Answer a request the proxy will not forward, then close the connection."""
        LOG.debug(
            "router %s: metadata request from %s refused: %s",
            self.server.table.router_id,
            self.source,
            refusal,
        )
        if self.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers, body = _text_answer(refusal.status, refusal.reason)
        if refusal.status == 405:
            headers.append(("Allow", "GET, HEAD, POST"))
        await self._send(refusal.status, [*headers, ("Connection", "close")], body)
        await _linger(self.reader, self.writer, self.limits.refusal_linger)

    async def _send(self, status: int, headers: Headers, body: bytes) -> None:
        self.writer.write(_encode(self.http, status, headers, body, self.head))
        async with asyncio.timeout(self.limits.client_timeout):
            await self.writer.drain()


def _text_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(name.decode("ascii").lower(), value.decode("latin-1")) for name, value in headers]


class MetadataSubsystem:
    """Runs the proxy while the document has a metadata section; updates keep the socket."""

    name = "metadata"

    def __init__(
        self, host: str = "::", port: int = METADATA_PORT, limits: ProxyLimits | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.limits = limits or ProxyLimits()
        self._server: MetadataServer | None = None

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
                self._server = MetadataServer(self.host, self.port, table, self.limits)
            except OSError as exc:
                raise ApplyStepError(
                    self.name, f"cannot listen on port {self.port}: {exc}"
                ) from exc
            self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
