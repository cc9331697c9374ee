"""The per-router state machine, as one pure decision.

The worker observes a router (what Neutron wants, what the instance reports, the failure
history) and asks ``decide`` what to do next. ``decide`` has no I/O and no memory: everything
it needs is in the Observation, so a crash at any point is repaired by observing again and
deciding again. Every action it returns is idempotent.

Read it top to bottom: the first rule that applies wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """Where a router stands; stored and shown to operators, mapped to Neutron's status."""

    UNMANAGED = "unmanaged"  # an operator took the router out of Astara's hands
    BOOTING = "booting"  # an instance is being created or has not answered yet
    CONFIGURING = "configuring"  # the instance answers; the latest document is not applied yet
    ACTIVE = "active"  # the instance applied the latest document
    BACKOFF = "backoff"  # failed recently; waiting before the next attempt
    ERROR = "error"  # failed too often; waits for a change or an operator rebuild
    DELETING = "deleting"  # the router is gone from Neutron; its instance is being removed
    DELETED = "deleted"  # nothing left; the router can be forgotten


class Action(StrEnum):
    NOTHING = "nothing"  # healthy, or waiting (see Decision.retry_at)
    BOOT = "boot"  # create an instance with the router's ports
    PUSH_CONFIG = "push_config"  # PUT the whole document to the instance
    REPLACE = "replace"  # build a new instance, then remove the old one
    DELETE_INSTANCE = "delete_instance"  # remove the instance and its ports
    FORGET = "forget"  # drop the router from the store
    MARK_ERROR = "mark_error"  # record ERROR and tell Neutron


@dataclass(frozen=True)
class InstanceView:
    """What is known of the router's instance right now."""

    booted_at: float
    reachable: bool  # its API answered the last probe
    ever_reachable: bool  # it answered at least once since it booted
    applied_generation: int | None
    failed: bool = False  # the provider gave up on it (a Nova server in ERROR)


@dataclass(frozen=True)
class Observation:
    now: float
    managed: bool
    router_exists: bool  # Neutron still has the router
    desired_generation: int  # the generation of the latest rendered document
    instance: InstanceView | None
    failures: int  # consecutive failures since the last success
    last_failure_at: float | None
    error_generation: int | None  # the desired generation when ERROR was entered
    rebuild_requested: bool = False


@dataclass(frozen=True)
class Policy:
    boot_timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_failures: int = 5
    boot_poll_interval: float = 1.0


@dataclass(frozen=True)
class Decision:
    action: Action
    state: State
    reason: str
    retry_at: float | None = None  # when NOTHING: observe again at this time
    # The instance failed (it never came up): counts towards ERROR like a failed push.
    failure: bool = False


def backoff_delay(failures: int, policy: Policy) -> float:
    """Exponential, capped: base, 2*base, 4*base ... up to cap."""
    if failures <= 0:
        return 0.0
    return float(min(policy.backoff_cap, policy.backoff_base * 2 ** (failures - 1)))


def decide(obs: Observation, policy: Policy) -> Decision:
    if not obs.managed:
        return Decision(Action.NOTHING, State.UNMANAGED, "unmanaged by an operator")

    if not obs.router_exists:
        if obs.instance is not None:
            return Decision(Action.DELETE_INSTANCE, State.DELETING, "router deleted in Neutron")
        return Decision(Action.FORGET, State.DELETED, "router and instance are gone")

    if obs.rebuild_requested:
        return Decision(Action.REPLACE, State.BOOTING, "rebuild requested by an operator")

    in_error = obs.error_generation is not None
    if in_error and obs.desired_generation <= (obs.error_generation or 0):
        return Decision(Action.NOTHING, State.ERROR, "in ERROR until a change or a rebuild")
    failures = 0 if in_error else obs.failures  # a change after ERROR starts afresh

    if failures >= policy.max_failures:
        return Decision(Action.MARK_ERROR, State.ERROR, f"{failures} consecutive failures")

    if failures and obs.last_failure_at is not None:
        retry_at = obs.last_failure_at + backoff_delay(failures, policy)
        if obs.now < retry_at:
            return Decision(Action.NOTHING, State.BACKOFF, "backing off after a failure", retry_at)

    instance = obs.instance
    if instance is None:
        return Decision(Action.BOOT, State.BOOTING, "no instance")

    if instance.failed:
        return Decision(Action.REPLACE, State.BOOTING, "instance failed", failure=True)
    if not instance.ever_reachable:
        if obs.now - instance.booted_at > policy.boot_timeout:
            return Decision(Action.REPLACE, State.BOOTING, "boot timed out", failure=True)
        return Decision(
            Action.NOTHING,
            State.BOOTING,
            "waiting for the instance to answer",
            obs.now + policy.boot_poll_interval,
        )

    if not instance.reachable:
        return Decision(Action.REPLACE, State.BOOTING, "instance stopped answering")

    if instance.applied_generation != obs.desired_generation:
        return Decision(Action.PUSH_CONFIG, State.CONFIGURING, "configuration out of date")

    return Decision(Action.NOTHING, State.ACTIVE, "configured")
