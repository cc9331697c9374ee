"""The management API's bodies: what it answers and what it accepts (OpenAPI comes from here).

Requests refuse unknown fields, so a typo is a 400 naming the field rather than an option
silently ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from astara.orchestrator.health_loop import InstanceHealth

# A Glance image or Nova flavor, by name or id: printable, no control characters.
ResourceRef = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class Instance(BaseModel):
    id: str
    router_id: str
    provider: str
    management_address: str | None
    acknowledged_generation: int = Field(description="The generation the instance applied")
    ever_reachable: bool = Field(description="Its API answered at least once since it booted")
    health: InstanceHealth
    last_heartbeat_at: datetime | None
    reported_generation: int | None = Field(
        description="The generation its latest heartbeat says it runs"
    )
    drifted: bool = Field(description="Its latest heartbeat says its live state drifted")
    created_at: datetime


class Router(BaseModel):
    id: str
    project_id: str
    state: str = Field(description="new, booting, configuring, active, backoff, error, ...")
    managed: bool
    debug: bool
    desired_generation: int = Field(description="The generation of Neutron's latest state")
    acknowledged_generation: int | None = Field(
        description="The generation its newest instance applied"
    )
    error_count: int
    last_error: str | None
    instance_id: str | None = Field(description="Its newest instance")
    health: InstanceHealth | None = Field(description="Its newest instance's health")
    image: str | None = Field(description="Image chosen by an operator's rebuild")
    flavor: str | None = Field(description="Flavor chosen by an operator's rebuild")
    updated_at: datetime


class WorkerRef(BaseModel):
    index: int
    pid: int | None
    thread: str | None = Field(description="The thread stepping the router right now")


class Event(BaseModel):
    id: int
    time: datetime
    router_id: str | None
    instance_id: str | None
    message: str
    actor: str | None = Field(description="Who asked, for an operator's action")


class RouterDetail(Router):
    instances: list[Instance]
    worker: WorkerRef
    events: list[Event] = Field(description="The newest entries of its event log")


class RouterList(BaseModel):
    routers: list[Router]


class InstanceList(BaseModel):
    instances: list[Instance]


class EventList(BaseModel):
    events: list[Event]


class Thread(BaseModel):
    name: str
    router_id: str | None
    since: datetime | None


class Worker(BaseModel):
    index: int
    pid: int | None
    alive: bool
    queue_events: int = Field(description="Events waiting in its process queue")
    inbox_events: int | None = Field(description="Events waiting in its routers' inboxes")
    routers: int | None = Field(description="Routers with queued events or a wake-up")
    ready_routers: int | None = Field(description="Routers waiting for a thread")
    scheduled: int | None = Field(description="Timed wake-ups pending")
    threads: list[Thread]
    reported_at: datetime | None = Field(description="When its latest status arrived")


class WorkerList(BaseModel):
    workers: list[Worker]


class Breaker(BaseModel):
    open: bool
    reason: str | None
    recent_deaths: int
    window: float
    max_dead_share: float
    min_deaths: int
    watched_instances: int


class Project(BaseModel):
    id: str
    debug: bool
    routers: int


class OptionChange(BaseModel):
    option: str
    old: str | None
    new: str | None


class Reloaded(BaseModel):
    changed: list[OptionChange]


class Accepted(BaseModel):
    """202: the request is recorded and on its way to the router's worker."""

    router_id: str
    action: Literal["rebuild", "poll"]
    detail: str


class RebuildRequest(BaseModel):
    """Rebuild with another image or flavor; an omitted field keeps the router's current
    choice, null goes back to the configured one."""

    model_config = ConfigDict(extra="forbid")

    image: ResourceRef | None = None
    flavor: ResourceRef | None = None


class DebugRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


class Problem(BaseModel):
    loc: list[str | int]
    msg: str


class Error(BaseModel):
    """Every 4xx: the reason (``message``, where OpenStack clients look for it); for a 400,
    each problem with the field it concerns."""

    message: str
    problems: list[Problem] = []
