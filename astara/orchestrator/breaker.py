"""The replacement circuit breaker: stop replacing when many instances die at once.

When a large share of the fleet dies within a short window, the cause is almost never the
appliances (a network partition, a read-only database, a lost availability zone), and
replacing them all would only pile load on Nova and Neutron. The breaker then opens: no
replacement is allowed, an alarm is raised (an ERROR log line, a gauge, a status string),
and it closes again when an operator clears it or when health returns: the deaths within
the window and the instances dead right now are both back within the threshold.

The caller reports the fleet once per health tick with ``observe`` (level-triggered, like the
health monitor): the same dead instance reported on many ticks counts as one death.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

LOG = logging.getLogger(__name__)

DEFAULT_WINDOW = 120.0
DEFAULT_MAX_DEAD_SHARE = 0.2
DEFAULT_MIN_DEATHS = 3


def over_threshold(deaths: int, managed: int, max_dead_share: float, min_deaths: int) -> bool:
    """True when ``deaths`` is more than the allowed share of ``managed``. The absolute floor
    keeps one death in a fleet of three from stopping all replacement."""
    return deaths >= min_deaths and deaths > max_dead_share * managed


@dataclass(frozen=True)
class BreakerView:
    """The breaker as an operator sees it."""

    open: bool
    reason: str | None  # why it opened, while open
    recent_deaths: int  # deaths within the window that still count
    window: float
    max_dead_share: float
    min_deaths: int


@dataclass
class _Death:
    at: float
    forgiven: bool = False  # died before an operator clear or a recovery; no longer counts


class CircuitBreaker:
    def __init__(
        self,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        *,
        window: float = DEFAULT_WINDOW,
        max_dead_share: float = DEFAULT_MAX_DEAD_SHARE,
        min_deaths: int = DEFAULT_MIN_DEATHS,
    ) -> None:
        self._clock = clock
        self.configure(window=window, max_dead_share=max_dead_share, min_deaths=min_deaths)
        self._deaths: dict[str, _Death] = {}
        self._opened: str | None = None  # why it is open, None while closed
        self._gauge = Gauge(
            "astara_replacement_breaker_open",
            "1 while mass failure has stopped instance replacement",
            registry=registry,
        )
        self._gauge.set(0)

    def configure(self, *, window: float, max_dead_share: float, min_deaths: int) -> None:
        """Thresholds; changed at run time by a configuration reload."""
        if not 0 < max_dead_share < 1:
            raise ValueError("max_dead_share must be between 0 and 1")
        self._window = window
        self._max_dead_share = max_dead_share
        self._min_deaths = min_deaths

    def observe(self, managed: int, dead: Iterable[str]) -> None:
        """Report the fleet: how many instances are managed and which are dead right now."""
        now = self._clock()
        dead_now = set(dead)
        for iid in dead_now:
            self._deaths.setdefault(iid, _Death(at=now))
        # A death leaves the record once it is out of the window and the instance is gone or
        # alive again; while it stays dead it is kept, so that it is never counted twice.
        self._deaths = {
            iid: d for iid, d in self._deaths.items() if iid in dead_now or self._recent(d, now)
        }
        recent = sum(1 for d in self._deaths.values() if self._recent(d, now) and not d.forgiven)
        if self._opened is None:
            if over_threshold(recent, managed, self._max_dead_share, self._min_deaths):
                self._open(
                    f"{recent} of {managed} instances died within {self._window:.0f} s "
                    f"(limit {self._max_dead_share:.0%})"
                )
        elif (
            not over_threshold(recent, managed, self._max_dead_share, self._min_deaths)
            and len(dead_now) <= self._max_dead_share * managed
        ):
            self._close(f"health returned: {len(dead_now)} of {managed} instances dead")

    def allow_replacement(self) -> bool:
        return self._opened is None

    def clear(self, operator: str) -> None:
        """An operator says the mass failure is understood; replace what is dead."""
        if self._opened is not None:
            self._close(f"cleared by {operator}")

    @property
    def status(self) -> str:
        return "closed" if self._opened is None else f"open: {self._opened}"

    def view(self) -> BreakerView:
        now = self._clock()
        deaths = list(self._deaths.values())  # one atomic copy: the health thread writes it
        return BreakerView(
            open=self._opened is not None,
            reason=self._opened,
            recent_deaths=sum(1 for d in deaths if self._recent(d, now) and not d.forgiven),
            window=self._window,
            max_dead_share=self._max_dead_share,
            min_deaths=self._min_deaths,
        )

    def _recent(self, death: _Death, now: float) -> bool:
        return now - death.at <= self._window

    def _open(self, reason: str) -> None:
        self._opened = reason
        self._gauge.set(1)
        LOG.error("replacement circuit breaker open, replacements stopped: %s", reason)

    def _close(self, reason: str) -> None:
        # Whatever died before now has been dealt with as one event; don't let it re-open.
        for death in self._deaths.values():
            death.forgiven = True
        self._opened = None
        self._gauge.set(0)
        LOG.warning("replacement circuit breaker closed, replacements resume: %s", reason)
