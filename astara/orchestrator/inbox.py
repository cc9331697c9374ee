"""A resource's inbox: events that arrive while it is busy, coalesced into what to do next.

Rules: a poll merges into whatever is queued; updates merge into one; a create or a rebuild
absorbs the updates and polls around it (both reconfigure everything); a delete wins over
everything queued before it; what arrives after a delete (a create, say) is kept for after it.
So the inbox never holds more than two entries: an optional delete, then one merged action.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from astara.orchestrator.events import Event, EventAction

# Among actions that merge, the stronger one is what runs.
_STRENGTH = {
    EventAction.POLL: 0,
    EventAction.UPDATE: 1,
    EventAction.CREATE: 2,
    EventAction.REBUILD: 3,
}


class Inbox:
    """Thread-safe: producers ``put`` while a worker thread ``take``s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[Event] = []

    def put(self, event: Event) -> None:
        with self._lock:
            if event.action is EventAction.DELETE:
                earliest = self._queued[0] if self._queued else event
                self._queued = [_merged(earliest, event, event.action)]
                return
            last = self._queued[-1] if self._queued else None
            if last is None or last.action is EventAction.DELETE:
                # A poll of something about to be deleted has nothing to check.
                if last is None or event.action is not EventAction.POLL:
                    self._queued.append(event)
                return
            stronger = max(last.action, event.action, key=_STRENGTH.__getitem__)
            self._queued[-1] = _merged(last, event, stronger)

    def take(self) -> Event | None:
        """The next action to run, or None when nothing is queued."""
        with self._lock:
            return self._queued.pop(0) if self._queued else None

    def pending(self) -> int:
        with self._lock:
            return len(self._queued)


def _merged(earlier: Event, later: Event, action: EventAction) -> Event:
    """One event for two: the winning action with its cause (and what that cause says about
    an instance), timed by the earlier arrival."""
    winner = later if later.action is action else earlier
    return replace(
        later,
        action=action,
        cause=winner.cause,
        instance_id=winner.instance_id,
        reported_generation=winner.reported_generation,
        received_at=earlier.received_at,
    )
