"""The provider's periodic upkeep, in the orchestrator's parent process.

One thread calls ``Provider.maintain`` every ``[provider] housekeeping_interval`` seconds with
the ids of every instance the store knows (a router owns them): the Nova provider refills its
warm pool and removes servers and ports left by a crash. A failed round is logged and the next
one tries again; it never stops the orchestrator.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

from astara.providers.base import Provider

LOG = logging.getLogger(__name__)


class Housekeeping:
    def __init__(
        self, provider: Provider, known: Callable[[], Collection[str]], interval: float
    ) -> None:
        self._provider = provider
        self._known = known
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def run_once(self) -> None:
        try:
            self._provider.maintain(self._known())
        except Exception:
            LOG.exception("provider upkeep failed; trying again in %.0f s", self._interval)
        self.rounds += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)
