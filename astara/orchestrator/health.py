"""Failure detection: missed heartbeats raise suspicion, an active probe confirms.

Heartbeats alone would declare an instance dead when only its heartbeat path is broken (a
lost key, a firewall); a probe alone would mean polling every instance. So silence past
``miss_threshold`` intervals makes an instance SUSPECT and calls for one probe of its API;
DEAD needs both. A probe that does not answer within the timeout counts as failed, so an
appliance whose process lives but whose API hangs is dead too.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum
from typing import Protocol

LOG = logging.getLogger(__name__)

DEFAULT_MISS_THRESHOLD = 4
DEFAULT_PROBE_TIMEOUT = 3.0


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
    """Judge one instance. ``probe_result`` is None when no probe was made yet."""
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
        self._vouched: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tick(self, ignore: Collection[str] = ()) -> list[str]:
        """``ignore``: instances left alone (of unmanaged routers): neither judged nor probed."""
        now = self._clock()
        watched = {i: at for i, at in self._source.liveness().items() if i not in ignore}
        for table in (self._vouched, self._dead_since):
            for gone in table.keys() - watched.keys():
                del table[gone]
        seen = {iid: max(at, self._vouched.get(iid, at)) for iid, at in watched.items()}
        dead = []
        suspects = []
        for iid, last in seen.items():
            if self._dead_since.get(iid, float("-inf")) >= last:
                dead.append(iid)  # nothing heard since it was declared dead
            elif assess(now, last, self._interval, self._miss_threshold, None) is Verdict.SUSPECT:
                suspects.append(iid)
        for iid, answered in self._probe_all(suspects).items():
            verdict = assess(now, seen[iid], self._interval, self._miss_threshold, answered)
            if verdict is Verdict.DEAD:
                LOG.warning(
                    "instance %s is dead: silent for %.1f s and its probe failed",
                    iid,
                    now - seen[iid],
                )
                self._dead_since[iid] = now
                dead.append(iid)
            else:
                LOG.warning(
                    "instance %s: no heartbeat for %.1f s but its API answers",
                    iid,
                    now - seen[iid],
                )
                self._vouched[iid] = self._clock()
        return sorted(dead)

    def _probe_all(self, instance_ids: list[str]) -> dict[str, bool]:
        """Probe in parallel; a probe that raises or outlives the timeout has failed."""
        futures = {self._pool.submit(self._probe, iid): iid for iid in instance_ids}
        done, _ = concurrent.futures.wait(futures, timeout=self._probe_timeout)
        results = {}
        for future, iid in futures.items():
            if future not in done:
                future.cancel()
                LOG.info("probe of %s timed out after %.1f s", iid, self._probe_timeout)
                results[iid] = False
            elif future.exception() is not None:
                LOG.info("probe of %s failed: %s", iid, future.exception())
                results[iid] = False
            else:
                results[iid] = bool(future.result())
        return results
