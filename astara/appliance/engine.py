"""The apply engine: converges the data plane to a document, all or nothing.

Subsystems run in a fixed order (links and addresses first, because the packet filter, DHCP and
router advertisements refer to interfaces). When one fails, the steps already taken are walked
back in reverse by re-applying the previous document, so the appliance is never left between
two generations. The last good document is kept on disk (secrets included: it must be
re-applied at boot, before the orchestrator speaks again).

After each apply the engine fingerprints the live state it produced (through a
``LiveStateProbe``), so that a change made behind its back (a flushed table, a deleted
address, a killed daemon) shows as drift, which ``reapply`` repairs.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from astara.appliance.heartbeat import RunningState
from astara.appliance.status import LiveState, LiveStateProbe
from astara.appliance.subsystem import ApplyStepError, LinkMap, Subsystem
from astara.wire.api import Health
from astara.wire.document import ApplianceConfig, SectionDumper, problems, text_digest

LOG = logging.getLogger(__name__)

APPLY_ORDER = (
    "addresses",
    "firewall",
    "conntrack",
    "dhcp",
    "ra",
    "bgp",
    "metadata",
    "hostname",
)
STATE_FILE = "config.json"
LINKS_STEP = "links"
LINK_POLL_INTERVAL = 0.2  # seconds between two looks for a NIC still to appear

ResolveLinks = Callable[[Iterable[str]], LinkMap]


class StaleGeneration(Exception):
    """The document is older than (or conflicts with) the one applied: the API answers 409."""

    def __init__(self, applied: int, requested: int, detail: str) -> None:
        super().__init__(detail)
        self.applied = applied
        self.requested = requested
        self.detail = detail


class ApplyFailed(Exception):
    """A step failed; the previous document has been re-applied. The API answers 500."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


class NothingApplied(Exception):
    """There is no document to re-apply yet: the API answers 404."""


RECORD_DELAY = 0.05  # seconds between an apply's answer and recording it (see _record)


def order_subsystems(subsystems: Iterable[Subsystem]) -> list[Subsystem]:
    """Known subsystems in APPLY_ORDER, any others after them in the order given."""
    rank = {name: index for index, name in enumerate(APPLY_ORDER)}
    return sorted(subsystems, key=lambda sub: rank.get(sub.name, len(rank)))


class ConfigStore:
    """The last good document on disk: written atomically, readable by root only."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def save(self, text: str) -> None:
        """Keep ``text`` (a document's ``dump_with_secrets``) as the last good document."""
        # The directory stays traversable: daemons that dropped root read their files below it.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def load(self) -> ApplianceConfig | None:
        """The saved document; None when there is none. InvalidSaved when it is unreadable
        or no longer valid (a newer appliance may refuse what an older one accepted)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSaved(f"unreadable: {exc}") from exc
        try:
            config = ApplianceConfig.model_validate_json(text)
        except ValidationError as exc:
            raise InvalidSaved(
                "; ".join(f"{_path(e['loc'])}: {e['msg']}" for e in exc.errors())
            ) from exc
        found = problems(config)
        if found:
            raise InvalidSaved("; ".join(f"{_path(p.loc)}: {p.msg}" for p in found))
        return config

    def set_aside(self) -> Path:
        """Move the saved document out of the way, kept for the operator (root only)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.name}.invalid-{stamp}")
        os.chmod(self.path, 0o600)
        os.replace(self.path, kept)
        return kept


class InvalidSaved(Exception):
    """The saved document cannot be re-applied; the message says why."""


def _path(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc) or "document"


def _macs(*configs: ApplianceConfig | None) -> set[str]:
    return {iface.mac for config in configs if config for iface in config.interfaces}


class Engine:
    """Serialises applies of whole documents over an ordered list of subsystems."""

    def __init__(
        self,
        subsystems: Sequence[Subsystem],
        state_dir: Path,
        resolve_links: ResolveLinks,
        probe: LiveStateProbe | None = None,
        link_wait: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``link_wait``: seconds an apply waits for a NIC of the document to appear (a NIC
        hot-plugged into a VM shows up a moment after the hypervisor says it is attached)."""
        self.subsystems = order_subsystems(subsystems)
        self._link_wait = link_wait
        self._sleep = sleep
        self.store = ConfigStore(state_dir)
        self._resolve_links = resolve_links
        self._probe = probe
        self._lock = threading.Lock()
        self._current: ApplianceConfig | None = None
        self._health = Health()
        # The live state the last apply produced; None when unknown.
        self._live: LiveState | None = None
        # The last live state recorded: the next record reads again only what the subsystems
        # wrote since (None: everything).
        self._base: LiveState | None = None
        self._converges = 0  # applies started: a record read while another ran is discarded
        # Set once the last successful apply's digest and fingerprint are recorded.
        self._recorded = threading.Event()
        self._recorded.set()
        self._saving = threading.Lock()  # one background save at a time, the newest wins
        self._dumper = SectionDumper()  # re-dumps only the sections an apply changed

    @property
    def current(self) -> ApplianceConfig | None:
        return self._current

    def ports(self) -> dict[str, str]:
        """MAC -> Neutron port id of the applied document's interfaces that name one."""
        current = self._current
        if current is None:
            return {}
        return {iface.mac: iface.port_id for iface in current.interfaces if iface.port_id}

    def health(self) -> Health:
        return self._health.model_copy()

    def running_state(self) -> RunningState:
        """What heartbeats report: the applied generation and the digest of its document."""
        health = self._health
        return RunningState(generation=health.generation, digest=health.config_digest or "")

    def drift(self) -> bool | None:
        """Whether the live state differs from what the last apply produced.

        None before the first apply, without a probe, and while an apply runs: health
        checks must answer at once, not wait for a long apply. A live state that cannot
        be read (an interface gone, nft failing) counts as drift. The read runs outside the
        lock (an apply must not wait for it); an apply that starts meanwhile makes it None.
        """
        if not self._recorded.is_set() or not self._lock.acquire(blocking=False):
            return None
        try:
            current, live, converge = self._current, self._live, self._converges
        finally:
            self._lock.release()
        if current is None or self._probe is None:
            return None
        if live is None:
            return True
        try:
            drifted = self._probe.read(self._resolve_links(_macs(current))) != live
        except Exception:
            LOG.exception("live state unreadable: counted as drift")
            drifted = True
        return drifted if self._converges == converge else None

    def reapply(self) -> Health:
        """Apply the current document again through every subsystem as if from scratch
        (no previous document, so no fast path skips anything); raise NothingApplied or
        ApplyFailed. A failure is not rolled back: the target was the same document."""
        with self._lock:
            current = self._current
            if current is None:
                raise NothingApplied("no configuration has been applied")
            LOG.info("re-applying generation %d from scratch", current.generation)
            self._converge(current, None, roll_back=False)
            return self.health()

    def apply(self, config: ApplianceConfig) -> Health:
        """Converge to ``config``; raise StaleGeneration or ApplyFailed (after rolling back)."""
        with self._lock:
            current = self._current
            if current is not None:
                if config.generation < current.generation:
                    raise StaleGeneration(
                        current.generation,
                        config.generation,
                        f"generation {config.generation} is older than the applied "
                        f"{current.generation}",
                    )
                if config.generation == current.generation:
                    if config == current:
                        self._health = self._health.model_copy(
                            update={"last_result": "unchanged", "last_apply_duration_s": 0.0}
                        )
                        return self.health()
                    raise StaleGeneration(
                        current.generation,
                        config.generation,
                        f"generation {config.generation} is already applied with other content",
                    )
            self._converge(config, current)
            return self.health()

    def restore(self) -> ApplianceConfig | None:
        """Re-apply the document saved by the last good apply (at startup); None if none."""
        with self._lock:
            try:
                saved = self.store.load()
            except InvalidSaved as exc:
                # Starting unconfigured beats not starting: the orchestrator sees no
                # generation and pushes a new document.
                kept = self.store.set_aside()
                LOG.error(
                    "saved configuration refused (%s); moved to %s; waiting for a new one",
                    exc,
                    kept,
                )
                self._health = Health(last_error=f"saved configuration refused: {exc}")
                return None
            if saved is None:
                return None
            LOG.info("re-applying saved generation %d", saved.generation)
            self._converge(saved, None)
            return saved

    def _converge(
        self, desired: ApplianceConfig, previous: ApplianceConfig | None, roll_back: bool = True
    ) -> None:
        # A garbage collection over a large document's objects costs more than applying a
        # one-address change: none during an apply (the cycles wait for the next one).
        gc.disable()
        try:
            self._converge_steps(desired, previous, roll_back)
        finally:
            gc.enable()

    def _converge_steps(
        self, desired: ApplianceConfig, previous: ApplianceConfig | None, roll_back: bool
    ) -> None:
        started = time.perf_counter()
        self._converges += 1
        # Until this apply succeeds, what is live matches no recorded fingerprint.
        self._live = None
        try:
            links = self._links(desired, previous)
        except Exception as exc:
            self._fail(started, LINKS_STEP, f"cannot resolve interfaces: {exc}")
        for index, subsystem in enumerate(self.subsystems):
            step_started = time.perf_counter()
            try:
                subsystem.apply(desired, previous, links)
            except Exception as exc:
                detail = exc.detail if isinstance(exc, ApplyStepError) else f"{exc!r}"
                LOG.error(
                    "generation %d: %s failed: %s", desired.generation, subsystem.name, detail
                )
                if roll_back:
                    rollback_errors = self._roll_back(index, desired, previous, links)
                    if rollback_errors:
                        detail += "; rollback also failed: " + "; ".join(rollback_errors)
                    elif previous is not None:
                        self._live = self._base = self._record_live(previous, links)
                self._fail(started, subsystem.name, detail)
            LOG.debug(
                "generation %d: %s in %.1f ms",
                desired.generation,
                subsystem.name,
                (time.perf_counter() - step_started) * 1000,
            )
        self._current = desired
        self._health = Health(
            generation=desired.generation,
            config_digest=None,
            last_result="applied",
            last_apply_duration_s=time.perf_counter() - started,
        )
        LOG.info(
            "generation %d applied in %.3f s",
            desired.generation,
            self._health.last_apply_duration_s,
        )
        self._record(desired, links)

    def _record(self, desired: ApplianceConfig, links: LinkMap) -> None:
        """Save the document, digest it and read the live state, after the answer: for 1,000
        floating IPs and 5,000 rules this takes longer than applying a one-address change. A
        crash before the save loses nothing: the orchestrator sees the older generation at
        the next probe and pushes the newer one again."""
        recorded = self._recorded = threading.Event()
        converge = self._converges

        def work() -> None:
            text = self._dumper.dump(desired)
            with self._saving:
                if self._current is desired:  # a newer apply saves its own
                    self.store.save(text)
            digest = text_digest(text)
            live = self._record_live(desired, links, self._base)
            with self._lock:
                # Another apply since (even one rolled back) may have written during the read.
                if self._converges == converge:
                    self._live = self._base = live
                if self._current is desired:  # not overtaken by a newer apply
                    self._health = self._health.model_copy(update={"config_digest": digest})
            recorded.set()

        # Started a moment later, so it does not take the GIL from the answer being sent.
        timer = threading.Timer(RECORD_DELAY, work)
        timer.name, timer.daemon = "record-apply", True
        timer.start()

    def wait_recorded(self, timeout: float) -> bool:
        """Whether the last apply's digest and fingerprint are recorded (waiting up to timeout)."""
        return self._recorded.wait(timeout)

    def _record_live(
        self, config: ApplianceConfig, links: LinkMap, since: LiveState | None = None
    ) -> LiveState | None:
        """Record the live state on the interfaces of ``config`` only (those of an older
        document may be unplugged later, which is no drift)."""
        if self._probe is None:
            return None
        macs = _macs(config)
        try:
            return self._probe.read(
                {mac: name for mac, name in links.items() if mac in macs}, since
            )
        except Exception:
            LOG.exception("live state unreadable after the apply: drift will be reported")
            return None

    def _links(self, desired: ApplianceConfig, previous: ApplianceConfig | None) -> LinkMap:
        """Interfaces of both documents; those only the previous one had may be gone (unplugged)."""
        try:
            return self._resolve_links(_macs(desired, previous))
        except LookupError:
            pass
        deadline = time.monotonic() + self._link_wait
        while True:
            try:
                return self._resolve_links(_macs(desired))
            except LookupError:
                if time.monotonic() >= deadline:
                    raise
            self._sleep(LINK_POLL_INTERVAL)

    def _roll_back(
        self,
        failed_index: int,
        desired: ApplianceConfig,
        previous: ApplianceConfig | None,
        links: LinkMap,
    ) -> list[str]:
        """Re-apply ``previous`` from the failed step back to the first; list what failed."""
        errors = []
        for subsystem in reversed(self.subsystems[: failed_index + 1]):
            try:
                subsystem.apply(previous, desired, links)
            except Exception as exc:
                LOG.exception("rollback of %s failed", subsystem.name)
                errors.append(f"{subsystem.name}: {exc}")
        return errors

    def _fail(self, started: float, step: str, detail: str) -> NoReturn:
        self._health = Health(
            generation=self._current.generation if self._current else None,
            config_digest=self._health.config_digest,
            last_result="failed",
            last_apply_duration_s=time.perf_counter() - started,
            last_error=f"{step}: {detail}",
            last_failed_step=step,
        )
        raise ApplyFailed(step, detail)
