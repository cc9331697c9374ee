"""Failure detection: missed heartbeats raise suspicion, an active probe confirms.

Heartbeats alone would declare an instance dead when only its heartbeat path is broken (a
lost key, a firewall) or when it was merely starved of CPU for a moment; a probe alone would
mean polling every instance. So silence past ``miss_threshold`` intervals makes an instance
SUSPECT and starts one probe of it; DEAD needs both the silence and a failed probe. A probe
that does not answer within ``probe_timeout`` has failed, so an appliance whose process
lives but whose API hangs is dead too.

Probes run in the background: a tick never waits for one, so a hung appliance does not delay
the judgement of the others, and a probe that fails fast (connection refused, the provider
saying the instance is gone) is acted on at once (``wait`` returns when a probe ends). The
time a dead appliance takes to be found is the silence threshold plus, for one that hangs,
the probe timeout; a CPU-starved one is spared as long as it answers within the same span.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

LOG = logging.getLogger(__name__)

DEFAULT_MISS_THRESHOLD = 3
DEFAULT_PROBE_TIMEOUT = 2.5


class Verdict(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"  # silent for too long: probe it before deciding
    DEAD = "dead"


def assess(
    now: float,
    last_seen: float,
    interval: float,
    miss_threshold: int,
    probe_result: bool | None,
) -> Verdict:
    """Judge one instance. ``probe_result`` is None when no probe has ended yet."""
    if now - last_seen <= interval * miss_threshold:
        return Verdict.ALIVE
    if probe_result is None:
        return Verdict.SUSPECT
    return Verdict.ALIVE if probe_result else Verdict.DEAD


class LivenessSource(Protocol):
    def liveness(self) -> Mapping[str, float]:
        """When each watched instance was last known alive (the heartbeat receiver)."""
        ...


# True when the instance's API answered healthy; False or an exception otherwise. It should
# bound its own time; the monitor's timeout is the backstop.
Probe = Callable[[str], bool]


@dataclass
class _Probe:
    """One probe of one silence: started when a thread took it, ended with its answer."""

    silent_since: float  # the last sign of life it is about
    started: float | None = None  # the monitor's clock; a queued probe's time does not run
    answered: bool | None = None


class InstanceLookup(Protocol):
    """What the probe asks the provider (``Provider.get``)."""

    def get(self, instance_id: str) -> InstanceState | None: ...


class InstanceState(Protocol):
    @property
    def state(self) -> str: ...


def provider_first_probe(
    address_of: Callable[[str], str | None],
    provider: Callable[[], InstanceLookup],
    answers: Callable[[str], bool],
) -> Callable[[str], bool]:
    """The confirming probe: the provider's word first (an instance gone, stopped or failed is
    dead without waiting for a timeout), then whether the appliance's API ``answers`` at its
    address. A provider in trouble (a cloud API down) proves nothing: the API decides then.
    ``provider`` is called on each probe, so it can be made lazily in the probe's thread."""

    def probe(instance_id: str) -> bool:
        address = address_of(instance_id)
        if address is None:
            return False
        try:
            found = provider().get(instance_id)
        except Exception as exc:
            LOG.info("probe of %s: the provider cannot tell (%s)", instance_id, exc)
        else:
            if found is None or found.state != "running":
                state = found.state if found else "gone"
                LOG.info("probe of %s: the provider says it is %s", instance_id, state)
                return False
        return answers(address)

    return probe


class HealthMonitor:
    """Each ``tick`` judges every watched instance and returns the dead ones.

    The answer is a level, not an event: an instance stays in the list on every tick until it
    is unregistered from the source or sends a heartbeat again, so a caller that misses a
    tick (or restarts) loses nothing. A successful probe vouches for the instance like a
    heartbeat would, so a silent but healthy instance is probed once per threshold, not once
    per tick.
    """

    def __init__(
        self,
        source: LivenessSource,
        probe: Probe,
        clock: Callable[[], float] = time.time,
        *,
        interval: float,
        miss_threshold: int = DEFAULT_MISS_THRESHOLD,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        max_parallel_probes: int = 16,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._source = source
        self._probe = probe
        self._clock = clock
        self._interval = interval
        self._miss_threshold = miss_threshold
        self._probe_timeout = probe_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_parallel_probes, thread_name_prefix="health-probe"
        )
        self._ended = threading.Event()
        self._probes: dict[str, _Probe] = {}
        self._vouched: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}
        self._probed = Counter(
            "astara_health_probes",
            "Probes of silent appliances that ended, by result (answered or failed)",
            ["result"],
            registry=registry,
        )
        for result in ("answered", "failed"):
            self._probed.labels(result=result)

    def close(self) -> None:
        self._ended.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``, less if a probe ends meanwhile (its verdict is due)."""
        self._ended.wait(timeout)
        self._ended.clear()

    def probing(self) -> int:
        """Probes queued or running (for the metrics, and for tests to wait on)."""
        return sum(1 for pending in list(self._probes.values()) if pending.answered is None)

    def tick(self, ignore: Collection[str] = ()) -> list[str]:
        """``ignore``: instances left alone (of unmanaged routers): neither judged nor probed."""
        now = self._clock()
        watched = {i: at for i, at in self._source.liveness().items() if i not in ignore}
        for table in (self._vouched, self._dead_since, self._probes):
            for gone in table.keys() - watched.keys():
                del table[gone]
        dead = []
        # Beating since the threshold: alive, and nothing to look up (the common case, made
        # cheap for thousands of instances four times a second).
        cutoff = now - self._interval * self._miss_threshold
        for iid, heard in watched.items():
            if heard > cutoff:
                self._probes.pop(iid, None)
                continue
            last = max(heard, self._vouched.get(iid, heard))
            if self._dead_since.get(iid, float("-inf")) >= last:
                dead.append(iid)  # nothing heard since it was declared dead
                continue
            if assess(now, last, self._interval, self._miss_threshold, None) is Verdict.ALIVE:
                self._probes.pop(iid, None)  # heard again: a probe's answer no longer matters
                continue
            answered = self._outcome(iid, last, now)
            if answered is None:
                continue  # probing
            verdict = assess(now, last, self._interval, self._miss_threshold, answered)
            if verdict is Verdict.DEAD:
                LOG.warning(
                    "instance %s is dead: silent for %.1f s and its probe failed", iid, now - last
                )
                self._dead_since[iid] = now
                dead.append(iid)
            else:
                LOG.warning(
                    "instance %s: no heartbeat for %.1f s but its API answers", iid, now - last
                )
                self._vouched[iid] = now
        return sorted(dead)

    def _outcome(self, instance_id: str, silent_since: float, now: float) -> bool | None:
        """The answer of the probe of this silence, starting one if none runs; None while it
        runs. A probe past its timeout has failed, whether or not its thread returned."""
        pending = self._probes.get(instance_id)
        if pending is None or pending.silent_since != silent_since:
            pending = _Probe(silent_since)
            future = self._pool.submit(self._run_probe, instance_id, pending)
            future.add_done_callback(lambda _: self._ended.set())
            self._probes[instance_id] = pending
            return None
        if pending.answered is not None:
            answered = pending.answered
        elif pending.started is not None and now - pending.started > self._probe_timeout:
            LOG.info("probe of %s timed out after %.1f s", instance_id, self._probe_timeout)
            answered = False
        else:
            return None
        del self._probes[instance_id]
        return answered

    def _run_probe(self, instance_id: str, pending: _Probe) -> bool:
        pending.started = self._clock()
        try:
            answered = bool(self._probe(instance_id))
        except Exception as exc:
            LOG.info("probe of %s failed: %s", instance_id, exc)
            answered = False
        pending.answered = answered
        self._probed.labels(result="answered" if answered else "failed").inc()
        return answered
