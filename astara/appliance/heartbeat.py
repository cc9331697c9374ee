"""The appliance side of heartbeats: the sender thread and the drift verdict it carries.

The datagram format lives in ``astara.wire.heartbeat``, shared with the orchestrator's receiver.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from astara.wire.heartbeat import (
    DEFAULT_DRIFT_CHECK_INTERVAL,
    DEFAULT_INTERVAL,
    Heartbeat,
    encode,
    next_sequence,
)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningState:
    """What the appliance reports in each beat; supplied by a callback at send time."""

    generation: int | None
    digest: str
    drifted: bool = False


class DriftWatch:
    """The running state with a drift verdict, checked at most every ``interval`` seconds.

    A check reads the kernel's state (links, addresses, the ruleset), too much for every
    beat. An unknown verdict (an apply running, nothing applied yet) keeps the previous one
    and is asked again at the next beat.
    """

    def __init__(
        self,
        state: Callable[[], RunningState],
        drift: Callable[[], bool | None],
        interval: float = DEFAULT_DRIFT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._drift = drift
        self._interval = interval
        self._clock = clock
        self._drifted = False
        self._checked_at: float | None = None

    def running_state(self) -> RunningState:
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self._interval:
            verdict = self._drift()
            if verdict is not None:
                self._drifted, self._checked_at = verdict, now
        return dataclasses.replace(self._state(), drifted=self._drifted)


class HeartbeatSender:
    """A daemon thread that sends a signed heartbeat every ``interval`` seconds.

    A beat is skipped (and logged) when the state callback raises: an appliance that cannot
    describe itself should look silent, so that the orchestrator probes it.
    """

    def __init__(
        self,
        instance_id: str,
        key: bytes,
        target: tuple[str, int],
        state: Callable[[], RunningState],
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.instance_id = instance_id
        self._key = key
        self._target = target
        self._state = state
        self._interval = interval
        self._clock = clock
        self._sequence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._failing = False
        self.sent = 0

    def start(self) -> None:
        family, _, _, _, address = socket.getaddrinfo(*self._target, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._address = (str(address[0]), int(address[1]))
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.instance_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def beat_once(self) -> bool:
        """Send one heartbeat now; True if it left this host's stack."""
        if self._sock is None or self._address is None:
            raise RuntimeError("start() the sender first")
        try:
            running = self._state()
        except Exception:
            LOG.exception("heartbeat skipped: the running state is unavailable")
            return False
        now = self._clock()
        self._sequence = next_sequence(self._sequence, now)
        beat = Heartbeat(
            instance_id=self.instance_id,
            sequence=self._sequence,
            sent_at=now,
            generation=running.generation,
            digest=running.digest,
            drifted=running.drifted,
        )
        try:
            datagram = encode(beat, self._key)
        except ValueError:
            # A state the wire cannot carry must not end the thread: later beats may fit.
            LOG.exception("heartbeat skipped: the running state does not fit a datagram")
            return False
        try:
            self._sock.sendto(datagram, self._address)
        except OSError as exc:
            # Logged once per outage, not every interval.
            if not self._failing:
                LOG.warning("heartbeat to %s:%s failed: %s", *self._address, exc)
            self._failing = True
            return False
        if self._failing:
            LOG.info("heartbeats to %s:%s flow again", *self._address)
        self._failing = False
        self.sent += 1
        return True

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self.beat_once()
            due += self._interval
            delay = due - time.monotonic()
            if delay < 0:
                # Fell behind (a freeze, a slow callback): resume the rhythm, don't burst.
                due = time.monotonic()
                delay = 0
            self._stop.wait(delay)
