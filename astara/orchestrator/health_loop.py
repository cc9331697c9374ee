"""The orchestrator's watch over its appliances: heartbeats, probes, replacement, breaker.

Runs in the parent process. Every tick it (1) follows the store's list of instances, so the
heartbeat receiver knows every instance's key; (2) asks the HealthMonitor which instances are
dead (silent past the threshold and not answering a probe); (3) tells the circuit breaker, and
unless mass failure opened it, (4) sends the dead instances' routers a poll, whose step finds
the instance dead and replaces it; (5) sends a poll to the routers whose heartbeat says their
live state drifted, whose step re-applies. Last-seen times reach the store in one batch per
flush. ``vouch`` lends the periodic reconcile what the latest heartbeats say, so that it need
not ask every appliance's API.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from astara.orchestrator.breaker import CircuitBreaker
from astara.orchestrator.events import Event, EventAction, ResourceType
from astara.orchestrator.health import HealthMonitor
from astara.orchestrator.heartbeat import HeartbeatReceiver
from astara.orchestrator.reconciler import DRIFT_CAUSE, HEALTH_CAUSE
from astara.orchestrator.store import InstanceRecord, Store
from astara.wire.heartbeat import DEFAULT_DRIFT_CHECK_INTERVAL

LOG = logging.getLogger(__name__)

BREAKER_FILE = "replacement-paused"


class HeartbeatKeys:
    """Per-instance heartbeat keys, derived from one secret kept in the state directory.

    Deriving (HMAC of the instance id) means no key is stored per instance on this side, and
    each appliance holds only its own.
    """

    def __init__(self, state_path: Path) -> None:
        path = state_path / "heartbeat.secret"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        self._secret = bytes.fromhex(path.read_text().strip())

    def key_for(self, instance_id: str) -> bytes:
        return hmac.new(self._secret, instance_id.encode(), hashlib.sha256).digest()


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
        drift_poll_every: float = DEFAULT_DRIFT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``fresh_within``: how old a heartbeat may be to vouch for its instance;
        ``drift_poll_every``: how often a router whose heartbeats keep saying "drifted" is
        polled again (the appliance checks its drift that often)."""
        self._store = store
        self._receiver = receiver
        self._monitor = monitor
        self._breaker = breaker
        self._keys = keys
        self._dispatch = dispatch
        self._flag = state_path / BREAKER_FILE
        self._interval = interval
        self._flush_every = flush_every
        self._fresh_within = fresh_within
        self._drift_poll_every = drift_poll_every
        self._clock = clock
        self._known: dict[str, InstanceRecord] = {}
        self._by_router: dict[str, list[str]] = {}  # router id -> its instances' ids
        self._drift_polled: dict[str, float] = {}
        self._stop = threading.Event()
        self._clear = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> None:
        self._receiver.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._receiver.stop()
        self._monitor.close()

    def clear_breaker(self) -> None:
        """An operator's go-ahead (SIGUSR1): replacement resumes at the next tick."""
        self._clear.set()

    def vouch(self, router_id: str) -> tuple[str, int] | None:
        """(instance id, applied generation) when the router has one instance and its latest
        heartbeat is fresh, reports a generation and no drift; None otherwise."""
        instances = self._by_router.get(router_id, [])
        if len(instances) != 1:
            return None
        sighting = self._receiver.snapshot_of(instances[0])
        if sighting is None or self._clock() - sighting.last_seen > self._fresh_within:
            return None
        beat = sighting.heartbeat
        if beat.generation is None or beat.drifted:
            return None
        return beat.instance_id, beat.generation

    def probe_address(self, instance_id: str) -> str | None:
        known = self._known.get(instance_id)
        return known.management_address if known else None

    def tick(self) -> list[str]:
        self._follow_store()
        if self._clear.is_set():
            self._clear.clear()
            self._breaker.clear("operator")
        dead = self._monitor.tick()
        self._breaker.observe(len(self._known), dead)
        if self._breaker.allow_replacement():
            self._flag.unlink(missing_ok=True)
        else:
            self._flag.write_text(self._breaker.status + "\n")
            return dead
        self._poll_drifted()
        for instance_id in dead:
            self._poll(instance_id, HEALTH_CAUSE, "missed its heartbeats and its probe: replacing")
        return dead

    def _poll(self, instance_id: str, cause: str, why: str) -> None:
        """Ask the step of the instance's router to look at it now."""
        router_id = self._known[instance_id].router_id
        LOG.warning("router %s: instance %s %s", router_id, instance_id, why)
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
            if sighting.heartbeat.drifted and iid in self._known
        }
        self._drift_polled = {i: t for i, t in self._drift_polled.items() if i in drifted}
        for instance_id in sorted(drifted):
            if now - self._drift_polled.get(instance_id, float("-inf")) < self._drift_poll_every:
                continue
            self._drift_polled[instance_id] = now
            self._poll(instance_id, DRIFT_CAUSE, "reports its live state drifted")

    def _follow_store(self) -> None:
        current = {i.id: i for i in self._store.all_instances() if i.management_address}
        for gone in self._known.keys() - current.keys():
            self._receiver.unregister(gone)
        now = self._clock()
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
        while not self._stop.wait(self._interval):
            try:
                self.tick()
                if time.monotonic() - last_flush >= self._flush_every:
                    self._receiver.flush(self._store.record_last_seen)
                    last_flush = time.monotonic()
            except Exception:
                LOG.exception("health check failed; trying again at the next tick")
