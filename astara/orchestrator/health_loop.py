"""The orchestrator's watch over its appliances: heartbeats, probes, replacement, breaker.

Runs in the parent process. Every tick it (1) follows the store's list of instances (once a
second, reading it only when it changed), so the heartbeat receiver knows every instance's
key; (2) asks the HealthMonitor which instances of managed routers are dead (silent past the
threshold and not answering a probe); (3) tells the circuit breaker, and unless mass failure
opened it, (4) sends the dead instances' routers a poll, whose step finds the instance dead
and replaces it; (5) sends a poll to the routers whose heartbeat says their live state
drifted, whose step re-applies. Ticks come every half heartbeat interval and at once when a
probe ends. Last-seen times reach the store in one batch per flush. ``vouch`` lends the
periodic reconcile what the latest heartbeats say, so that it need not ask every appliance's
API.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from astara.common.files import write_private_atomic
from astara.orchestrator.breaker import BreakerView, CircuitBreaker
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.health import HealthMonitor
from astara.orchestrator.heartbeat import HeartbeatReceiver
from astara.orchestrator.reconciler import DRIFT_CAUSE, HEALTH_CAUSE
from astara.orchestrator.store import Store, WatchedInstance
from astara.wire.heartbeat import DEFAULT_DRIFT_CHECK_INTERVAL

LOG = logging.getLogger(__name__)

BREAKER_FILE = "replacement-paused"
# The store is looked at once a second, but the instances are read (about 50 ms for 5,000)
# only when its signature changed, or at the latest every DEFAULT_REREAD_EVERY seconds.
DEFAULT_FOLLOW_EVERY = 1.0
DEFAULT_REREAD_EVERY = 30.0
HEARTBEAT_SECRET_FILE = "heartbeat.secret"  # noqa: S105 (a file name)
# The secret is the HMAC key of every per-instance key: as strong as the HMAC's own output.
HEARTBEAT_SECRET_BYTES = 32


class WeakSecret(ValueError):
    """The heartbeat secret on disk is unusable; the message says which file and what to do."""


class HeartbeatKeys:
    """Per-instance heartbeat keys, derived from one secret kept in the state directory.

    Deriving (HMAC of the instance id) means no key is stored per instance on this side, and
    each appliance holds only its own.
    """

    def __init__(self, state_path: Path) -> None:
        """Made (0600, in one step) on first use; WeakSecret when the file holds less than a
        full secret, so that no key is ever derived from an empty or short one."""
        path = state_path / HEARTBEAT_SECRET_FILE
        fresh = secrets.token_hex(HEARTBEAT_SECRET_BYTES) + "\n"
        write_private_atomic(path, fresh.encode(), replace=False)
        self._secret = _read_secret(path)

    def key_for(self, instance_id: str) -> bytes:
        return hmac.new(self._secret, instance_id.encode(), hashlib.sha256).digest()


def _read_secret(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < HEARTBEAT_SECRET_BYTES:
        raise WeakSecret(
            f"{path} does not hold a heartbeat secret of {HEARTBEAT_SECRET_BYTES} bytes in hex "
            f"(found {len(text)} characters): remove it to have a new one made at start; the "
            "appliances booted with the old one must then be rebuilt"
        )
    return secret


class InstanceHealth(StrEnum):
    """What the health loop makes of an instance right now."""

    ALIVE = "alive"  # a fresh heartbeat
    SILENT = "silent"  # no fresh heartbeat; probed once past the miss threshold
    DEAD = "dead"  # silent and its probe failed: its router is told to replace it
    BOOTING = "booting"  # its API never answered yet (the boot timeout's business)
    UNWATCHED = "unwatched"  # its router is unmanaged, or it has no management address yet


@dataclass(frozen=True)
class HealthView:
    status: InstanceHealth
    last_heartbeat_at: float | None  # epoch seconds
    reported_generation: int | None  # the generation its latest heartbeat says it applied
    drifted: bool


def replacement_allowed(state_path: Path) -> Callable[[], bool]:
    """For the workers: False while the parent's circuit breaker is open."""
    flag = state_path / BREAKER_FILE
    return lambda: not flag.exists()


class HealthLoop:
    def __init__(
        self,
        store: Store,
        receiver: HeartbeatReceiver,
        monitor: HealthMonitor,
        breaker: CircuitBreaker,
        keys: HeartbeatKeys,
        dispatch: Callable[[Event], None],
        state_path: Path,
        interval: float,
        fresh_within: float,
        flush_every: float = 30.0,
        follow_every: float = DEFAULT_FOLLOW_EVERY,
        drift_poll_every: float = DEFAULT_DRIFT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``fresh_within``: how old a heartbeat may be to vouch for its instance;
        ``drift_poll_every``: how often a router whose heartbeats keep saying "drifted" is
        polled again (the appliance checks its drift that often); ``follow_every``: how often
        the store is looked at for changed instances (ticks come faster, for detection's
        sake)."""
        self._store = store
        self._receiver = receiver
        self._monitor = monitor
        self._breaker = breaker
        self._keys = keys
        self._dispatch = dispatch
        self._flag = state_path / BREAKER_FILE
        self._interval = interval
        self._flush_every = flush_every
        self._follow_every = follow_every
        self._followed_at = float("-inf")
        self._signature: tuple[object, ...] | None = None
        self._read_at = float("-inf")
        self._fresh_within = fresh_within
        self._drift_poll_every = drift_poll_every
        self._clock = clock
        self._known: dict[str, WatchedInstance] = {}
        self._by_router: dict[str, list[str]] = {}  # router id -> its instances' ids
        self._dead: frozenset[str] = frozenset()
        self._unmanaged: frozenset[str] = frozenset()
        self._drift_polled: dict[str, float] = {}
        self._stop = threading.Event()
        self._clear = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> None:
        self._receiver.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._monitor.close()  # wakes the thread from its wait
        self._thread.join()
        self._receiver.stop()

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``, less when a probe ends: its verdict is due at once."""
        self._monitor.wait(timeout)

    def probing(self) -> int:
        """Probes queued or running."""
        return self._monitor.probing()

    def clear_breaker(self) -> None:
        """An operator's go-ahead (SIGUSR1): replacement resumes at the next tick."""
        self._clear.set()

    def vouch(self, router_id: str) -> tuple[str, int] | None:
        """(instance id, applied generation) when the router has one instance and its latest
        heartbeat is fresh, reports a generation and no drift; None otherwise."""
        instances = self._by_router.get(router_id, [])
        if len(instances) != 1 or instances[0] in self._unmanaged:
            return None
        sighting = self._receiver.snapshot_of(instances[0])
        if sighting is None or self._clock() - sighting.last_seen > self._fresh_within:
            return None
        beat = sighting.heartbeat
        if beat.generation is None or beat.drifted:
            return None
        return beat.instance_id, beat.generation

    def awaiting_verdict(self, router_id: str) -> bool:
        """Whether an instance of the router is silent or found dead: the health loop is on it,
        and a periodic reconcile would only wait on its API (holding up the router's replacement
        behind a timeout)."""
        return any(
            self.health_of(iid).status in (InstanceHealth.SILENT, InstanceHealth.DEAD)
            for iid in self._by_router.get(router_id, [])
        )

    def health_of(self, instance_id: str) -> HealthView:
        known = self._known.get(instance_id)
        sighting = self._receiver.snapshot_of(instance_id)
        beat = sighting.heartbeat if sighting else None
        last = sighting.last_seen if sighting else None
        if known is None or instance_id in self._unmanaged:
            status = InstanceHealth.UNWATCHED
        elif instance_id in self._dead:
            status = InstanceHealth.DEAD
        elif last is not None and self._clock() - last <= self._fresh_within:
            status = InstanceHealth.ALIVE
        elif not known.ever_reachable:
            status = InstanceHealth.BOOTING
        else:
            status = InstanceHealth.SILENT
        return HealthView(
            status, last, beat.generation if beat else None, bool(beat and beat.drifted)
        )

    def health_counts(self) -> dict[InstanceHealth, int]:
        """Instances with a management address, by health (for the metrics)."""
        counts = Counter(self.health_of(iid).status for iid in list(self._known))
        return {status: counts.get(status, 0) for status in InstanceHealth}

    def watched(self) -> int:
        """Instances watched for failure (those of managed routers)."""
        return len(self._known) - len(self._unmanaged)

    def breaker_view(self) -> BreakerView:
        return self._breaker.view()

    def configure_breaker(self, *, window: float, max_dead_share: float, min_deaths: int) -> None:
        self._breaker.configure(window=window, max_dead_share=max_dead_share, min_deaths=min_deaths)

    def probe_address(self, instance_id: str) -> str | None:
        known = self._known.get(instance_id)
        return known.management_address if known else None

    def tick(self) -> list[str]:
        # The store and the drift flags change slowly: read them now and then, not every tick.
        slow = self._clock() - self._followed_at >= self._follow_every
        if slow:
            self._follow_store()
            self._followed_at = self._clock()
        if self._clear.is_set():
            self._clear.clear()
            self._breaker.clear("operator")
        dead = self._monitor.tick(ignore=self._unmanaged)
        already_dead, self._dead = self._dead, frozenset(dead)
        self._breaker.observe(self.watched(), dead)
        if self._breaker.allow_replacement():
            self._flag.unlink(missing_ok=True)
        else:
            self._flag.write_text(self._breaker.status + "\n")
            return dead
        if slow:
            self._poll_drifted()
        for instance_id in dead:
            # Polled every tick until replaced, but said once: a router in ERROR keeps its
            # dead instance and would repeat the warning every second.
            self._poll(
                instance_id,
                HEALTH_CAUSE,
                "missed its heartbeats and its probe: replacing",
                logging.DEBUG if instance_id in already_dead else logging.WARNING,
            )
        return dead

    def _poll(self, instance_id: str, cause: str, why: str, level: int = logging.WARNING) -> None:
        """Ask the step of the instance's router to look at it now."""
        router_id = self._known[instance_id].router_id
        LOG.log(level, "router %s: instance %s %s", router_id, instance_id, why)
        self._dispatch(
            Event(
                ResourceType.ROUTER,
                router_id,
                None,
                EventAction.POLL,
                cause,
                datetime.now(UTC),
                instance_id=instance_id,
            )
        )

    def _poll_drifted(self) -> None:
        now = self._clock()
        drifted = {
            iid
            for iid, sighting in self._receiver.snapshot().items()
            if sighting.heartbeat.drifted and iid in self._known and iid not in self._unmanaged
        }
        self._drift_polled = {i: t for i, t in self._drift_polled.items() if i in drifted}
        for instance_id in sorted(drifted):
            if now - self._drift_polled.get(instance_id, float("-inf")) < self._drift_poll_every:
                continue
            self._drift_polled[instance_id] = now
            self._poll(instance_id, DRIFT_CAUSE, "reports its live state drifted")

    def _follow_store(self) -> None:
        signature = self._store.watch_signature()
        now = self._clock()
        if signature != self._signature or now - self._read_at >= DEFAULT_REREAD_EVERY:
            self._signature, self._read_at = signature, now
            self._read_instances(now)
        # An unmanaged router's instances are left alone: their heartbeats are still
        # accepted (and shown), but they are not judged, probed, counted or replaced.
        self._unmanaged = frozenset(self._store.unmanaged_instance_ids() & self._known.keys())

    def _read_instances(self, now: float) -> None:
        current = {i.id: i for i in self._store.watched_instances()}
        for gone in self._known.keys() - current.keys():
            self._receiver.unregister(gone)
        for instance_id, record in current.items():
            if instance_id not in self._known or (
                record.ever_reachable and not self._known[instance_id].ever_reachable
            ):
                # Watched from the moment its API first answered: a silent new instance is
                # the boot timeout's business, not the heartbeat's.
                alive_at = now if record.ever_reachable else None
                self._receiver.register(instance_id, self._keys.key_for(instance_id), alive_at)
        by_router: dict[str, list[str]] = {}
        for record in current.values():
            by_router.setdefault(record.router_id, []).append(record.id)
        self._known, self._by_router = current, by_router

    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            self.wait(self._interval)
            if self._stop.is_set():
                return
            try:
                self.tick()
                if time.monotonic() - last_flush >= self._flush_every:
                    self._receiver.flush(self._store.record_last_seen)
                    last_flush = time.monotonic()
            except Exception:
                LOG.exception("health check failed; trying again at the next tick")
