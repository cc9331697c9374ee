"""The bodies of the appliance API's answers: what the appliance sends, what the client reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from astara.wire.document import Problem, Secret

ApplyResult = Literal["none", "applied", "unchanged", "failed"]


class Health(BaseModel):
    """What the engine last did, for GET /v1/health and the PUT answer."""

    generation: int | None = None
    config_digest: str | None = None
    last_result: ApplyResult = "none"
    last_apply_duration_s: float | None = None
    last_error: str | None = None
    last_failed_step: str | None = None


class ServiceHealth(Health):
    status: Literal["up"] = "up"
    uptime_s: float
    router_id: str | None = None
    # Whether the live state still is what the last apply produced; null before the first
    # apply (or while one runs). False right after an apply or a re-apply answer.
    drift: bool | None = None


class Problems(BaseModel):
    """422: every reason the document was refused; nothing was applied."""

    detail: list[Problem]


class Conflict(BaseModel):
    """409: the document is older than (or conflicts with) the applied one."""

    detail: str
    applied_generation: int
    requested_generation: int


class Failure(BaseModel):
    """500: a step of the apply failed; the previous configuration has been restored."""

    step: str
    detail: str


class Message(BaseModel):
    detail: str


# A P-256 key or certificate in PEM is under 1 kB; room for RSA and a chain.
MAX_PEM_CHARS = 16384


class Credentials(BaseModel):
    """PUT /v1/credentials: the appliance's new TLS certificate (PEM, from the CA it trusts,
    naming its management address) and its private key (PEM)."""

    cert: str = Field(max_length=MAX_PEM_CHARS)
    key: Secret = Field(max_length=MAX_PEM_CHARS)
