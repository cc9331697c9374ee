"""Hand-offs in the parent process that never block their caller and never grow with a burst.

``Feed``: between the parent and one worker process. ``put`` coalesces an event into its
router's inbox (the rules of ``inbox.Inbox``) and returns at once; one thread hands the
coalesced events to ``send``, which blocks while the worker's bounded queue is full
(back-pressure). What arrives meanwhile merges into what is already waiting, so a burst takes
memory in proportion to the routers it touches, not to its events, and no change is lost: a
merged event makes the worker re-read the router whole, as each of its parts would have.

``ProjectPolls``: a Neutron notification that names a project but no router (a tenant's port
changed) means "re-read every router of the project", which takes a Neutron call and a store
query. The listener's thread only asks; a thread of its own does the reading, once for all the
asks of a project that arrived before it started.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable

from astara.orchestrator.events import Event
from astara.orchestrator.inbox import Inbox

LOG = logging.getLogger(__name__)

# Delivers one event; blocks while the destination is full, raising queue.Full after a while
# so that stopping is noticed.
Sender = Callable[[Event], None]


class _Handoff(abc.ABC):
    """A thread of its own doing what callers hand over without waiting for it."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop; what still waits is dropped (a start resyncs everything)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _wait_for(self, work: Callable[[], bool]) -> bool:
        """Hold the lock: wait until ``work()``; False when stopping instead."""
        while not work() and not self._stopping:
            self._cond.wait()
        return not self._stopping

    @abc.abstractmethod
    def _run(self) -> None:
        """The thread: take what was handed over, until stopping."""


class Feed(_Handoff):
    def __init__(self, send: Sender, name: str) -> None:
        super().__init__(name)
        self._send = send
        # A router is in _waiting exactly while it is in _ready: its events not taken yet.
        self._waiting: dict[str, Inbox] = {}
        self._ready: deque[str] = deque()

    def put(self, event: Event) -> None:
        with self._cond:
            inbox = self._waiting.get(event.resource_id)
            if inbox is None:
                inbox = self._waiting[event.resource_id] = Inbox()
                self._ready.append(event.resource_id)
                self._cond.notify()
            inbox.put(event)

    def pending(self) -> int:
        """Events waiting for room in the destination."""
        with self._cond:
            return sum(inbox.pending() for inbox in self._waiting.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wait_for(lambda: bool(self._ready)):
                    return
                inbox = self._waiting.pop(self._ready.popleft())
            # Events for this router arriving from now on wait in a new inbox, behind these.
            while (event := inbox.take()) is not None:
                if not self._deliver(event):
                    return

    def _deliver(self, event: Event) -> bool:
        """True once delivered; False when stopping first."""
        while True:
            try:
                self._send(event)
                return True
            except queue.Full:
                with self._cond:
                    if self._stopping:
                        return False


class ProjectPolls(_Handoff):
    """Re-reads projects' routers on a thread of its own; asks for a project already waiting
    are one ask (one asked for while its routers are being read waits for one more read)."""

    def __init__(self, poll: Callable[[str], None]) -> None:
        super().__init__("project-polls")
        self._poll = poll
        self._asked: dict[str, None] = {}  # insertion-ordered: projects are read in turn

    def ask(self, project_id: str) -> None:
        with self._cond:
            if project_id not in self._asked:
                self._asked[project_id] = None
                self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._asked)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wait_for(lambda: bool(self._asked)):
                    return
                project_id = next(iter(self._asked))
                del self._asked[project_id]
            try:
                self._poll(project_id)
            except Exception:  # the next ask, or the periodic resync, reads it again
                LOG.exception("project %s: could not poll its routers", project_id)
