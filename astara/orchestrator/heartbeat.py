"""The orchestrator's heartbeat receiver: a UDP server thread with in-memory liveness.

Every datagram is validated (signature, replay, age) and only accepted ones update the
per-instance record. Nothing is written to the store per heartbeat (Octavia's one database
transaction per heartbeat is the cost to avoid); ``flush`` hands the last-seen times gathered
since the previous flush to a sink in one batch, for a periodic store write.

The thread reads in batches: after a wake-up it drains every queued datagram, then sleeps
``batch_window`` before looking again. A thousand appliances beating every 0.5 s then cost
four wake-ups a second instead of 2,000 (a wake-up is the dominant cost of a heartbeat); a
heartbeat is stamped up to ``batch_window`` late, which only delays detection by as much.
A batch of ``BUSY_BATCH`` or more means wake-ups are already amortised: the thread reads on
without sleeping, so a heavy load never waits on a receive buffer that may overflow.

A flood from one source address is cut before any signature is checked: each source has a
token bucket (``SourceLimiter``); what exceeds it is counted as ``rate_limited`` and dropped.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter

from astara.wire.heartbeat import (
    MAX_DATAGRAM,
    REJECTION_REASONS,
    Heartbeat,
    HeartbeatRejected,
    decode,
)

LOG = logging.getLogger(__name__)

DEFAULT_MAX_SKEW = 30.0
DEFAULT_BATCH_WINDOW = 0.25
BUSY_BATCH = 64
MAX_BATCH = 1024  # datagrams judged under one hold of the lock
RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class RateLimit:
    """Per source address: ``rate`` datagrams a second on average, ``burst`` at once, for at
    most ``sources`` addresses at a time."""

    rate: float
    burst: float
    sources: int


class SourceLimiter:
    """A token bucket per source address, in a table of bounded size.

    When the table is full, the source heard from least recently is forgotten: it comes back
    with a full bucket, so a flood of forged addresses can only make the limit more lenient
    for a real appliance, never silence it.
    """

    def __init__(self, limit: RateLimit) -> None:
        self._limit = limit
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.pop(source, (self._limit.burst, now))
        # A clock stepped back refills nothing (and takes nothing away).
        tokens = min(self._limit.burst, tokens + max(0.0, now - at) * self._limit.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._limit.sources:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class Sighting(NamedTuple):
    """The last accepted heartbeat of an instance and when it arrived (receiver's clock)."""

    last_seen: float
    heartbeat: Heartbeat


@dataclass
class _Peer:
    key: bytes
    alive_at: float | None  # known alive without a heartbeat (e.g. its API answered)
    sighting: Sighting | None = None


class HeartbeatReceiver:
    """Validates heartbeats for registered instances and remembers the last one of each."""

    def __init__(
        self,
        bind: tuple[str, int],
        registry: CollectorRegistry,
        limit: RateLimit,
        *,
        max_skew: float = DEFAULT_MAX_SKEW,
        batch_window: float = DEFAULT_BATCH_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bind = bind
        self._max_skew = max_skew
        self._batch_window = batch_window
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._unflushed: dict[str, float] = {}
        self._limiter = SourceLimiter(limit)
        self._accepted = Counter(
            "astara_heartbeats_accepted",
            "Heartbeat datagrams accepted",
            registry=registry,
        )
        self._rejected = Counter(
            "astara_heartbeats_rejected",
            "Heartbeat datagrams rejected, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in (*REJECTION_REASONS, RATE_LIMITED):
            self._rejected.labels(reason=reason)
        self._sock: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    # Registration: the orchestrator adds an instance's key when it creates the instance.

    def register(self, instance_id: str, key: bytes, alive_at: float | None = None) -> None:
        """Accept heartbeats from ``instance_id`` signed with ``key``.

        ``alive_at`` arms failure detection before the first heartbeat arrives (pass the time
        the instance's API first answered); without it, detection starts with the first
        heartbeat and a silent new instance is left to the boot timeout. Registering again
        replaces the key and keeps what was seen (key rotation).
        """
        with self._lock:
            peer = self._peers.get(instance_id)
            if peer is None:
                self._peers[instance_id] = _Peer(key=key, alive_at=alive_at)
            else:
                peer.key = key
                peer.alive_at = alive_at if alive_at is not None else peer.alive_at

    def unregister(self, instance_id: str) -> None:
        with self._lock:
            self._peers.pop(instance_id, None)
            self._unflushed.pop(instance_id, None)

    # Validation, callable without a socket.

    def handle(self, datagram: bytes, source: str | None = None) -> Heartbeat | None:
        """Validate one datagram (from ``source``, an address, when known); record, count
        and return its heartbeat, or count the rejection."""
        beat = self._accept(datagram, source)
        if beat is not None:
            self._accepted.inc()
        return beat

    def _accept(self, datagram: bytes, source: str | None) -> Heartbeat | None:
        """``handle`` but for the count of accepted ones (the server thread counts a batch)."""
        now = self._clock()
        with self._lock:
            return self._judge(datagram, source, now)

    def _judge(self, datagram: bytes, source: str | None, now: float) -> Heartbeat | None:
        """Validate and record one datagram; the caller holds the lock."""
        if source is not None and not self._limiter.allow(source, now):
            self._rejected.labels(reason=RATE_LIMITED).inc()
            return None
        try:
            beat = decode(datagram, self._key_of, now, self._max_skew, self._sequence_of)
        except HeartbeatRejected as exc:
            self._rejected.labels(reason=exc.reason).inc()
            LOG.debug("heartbeat rejected (%s): %s", exc.reason, exc)
            return None
        self._peers[beat.instance_id].sighting = Sighting(now, beat)
        self._unflushed[beat.instance_id] = now
        return beat

    def _key_of(self, instance_id: str) -> bytes | None:
        peer = self._peers.get(instance_id)
        return peer.key if peer else None

    def _sequence_of(self, instance_id: str) -> int | None:
        peer = self._peers.get(instance_id)
        return peer.sighting.heartbeat.sequence if peer and peer.sighting else None

    # Reading what was seen.

    def last_seen(self, instance_id: str) -> float | None:
        sighting = self.snapshot_of(instance_id)
        return sighting.last_seen if sighting else None

    def snapshot_of(self, instance_id: str) -> Sighting | None:
        """The last accepted heartbeat of one instance, if any."""
        with self._lock:
            peer = self._peers.get(instance_id)
            return peer.sighting if peer else None

    def snapshot(self) -> dict[str, Sighting]:
        """The last accepted heartbeat of every registered instance that has sent one."""
        with self._lock:
            return {iid: p.sighting for iid, p in self._peers.items() if p.sighting}

    def liveness(self) -> dict[str, float]:
        """When each armed instance was last known alive: its last heartbeat, or ``alive_at``
        if later. Instances with neither are not watched yet."""
        with self._lock:
            known = {
                iid: max(
                    p.sighting.last_seen if p.sighting else float("-inf"),
                    p.alive_at if p.alive_at is not None else float("-inf"),
                )
                for iid, p in self._peers.items()
            }
        return {iid: at for iid, at in known.items() if at != float("-inf")}

    def flush(self, sink: Callable[[Mapping[str, float]], None]) -> int:
        """Hand the last-seen times gathered since the previous flush to ``sink`` in one
        batch; return how many. If the sink raises, the batch is kept for the next flush."""
        with self._lock:
            batch, self._unflushed = self._unflushed, {}
        if not batch:
            return 0
        try:
            sink(batch)
        except Exception:
            with self._lock:
                for iid, seen in batch.items():
                    if iid in self._peers and self._unflushed.get(iid, seen) <= seen:
                        self._unflushed[iid] = seen
            raise
        return len(batch)

    # The server thread.

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (useful with port 0)."""
        if self._sock is None:
            raise RuntimeError("the receiver is not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        family, _, _, _, address = socket.getaddrinfo(*self._bind, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # Room for bursts (thousands of appliances beating at once after a partition heals);
        # the kernel caps it at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(address)
        sock.setblocking(False)
        self._sock = sock
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, self._wake[0]), name="heartbeat-receiver", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sock in (self._sock, *(self._wake or ())):
            if sock is not None:
                sock.close()
        self._sock = None
        self._wake = None

    def _serve(self, sock: socket.socket, wake: socket.socket) -> None:
        with selectors.DefaultSelector() as readable, selectors.DefaultSelector() as stopping:
            readable.register(sock, selectors.EVENT_READ)
            readable.register(wake, selectors.EVENT_READ)
            stopping.register(wake, selectors.EVENT_READ)
            while True:
                if any(key.fileobj is wake for key, _ in readable.select()):
                    return
                if self._drain(sock) < BUSY_BATCH and stopping.select(self._batch_window):
                    return

    def _drain(self, sock: socket.socket) -> int:
        """Read every datagram waiting and judge them, ``MAX_BATCH`` at a time under one look
        at the clock and one hold of the lock; return how many. One more byte than allowed
        reveals oversized ones."""
        count = 0
        while True:
            batch: list[tuple[bytes, Any]] = []
            try:
                while len(batch) < MAX_BATCH:
                    batch.append(sock.recvfrom(MAX_DATAGRAM + 1))
            except BlockingIOError:
                pass
            except OSError as exc:
                # ICMP errors surface here on some stacks; they are not heartbeats.
                LOG.debug("heartbeat socket error: %s", exc)
            if batch:
                now = self._clock()
                with self._lock:
                    accepted = sum(
                        self._judge(datagram, sender[0], now) is not None
                        for datagram, sender in batch
                    )
                if accepted:
                    self._accepted.inc(
                        accepted
                    )  # once a batch: a counter's lock per datagram adds up
                count += len(batch)
            if len(batch) < MAX_BATCH:
                return count
