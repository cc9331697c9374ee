"""The appliance's REST API: read its state, replace its configuration and its credentials.

Served over mutual TLS by ``astara.appliance.service``; this module only maps HTTP to the
engine and the status readers. Every refusal says precisely why: a 422 lists each problem with
its path in the document, whether pydantic or ``problems()`` (astara.wire.document) found it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from astara.appliance.bodylimit import BodyLimit
from astara.appliance.credentials import CredentialsRefused, TlsIdentity
from astara.appliance.engine import ApplyFailed, Engine, NothingApplied, StaleGeneration
from astara.appliance.intake import DocumentReader
from astara.appliance.status import Counters, InterfaceStatus, StatusReader
from astara.wire.api import (
    Conflict,
    Credentials,
    Failure,
    Health,
    Message,
    Problems,
    ServiceHealth,
)
from astara.wire.document import ApplianceConfig, Problem, problems

JSON_TYPE = "application/json"
# 1,000 floating IPs and 5,000 firewall rules make a 1.5 MB document: five times that fits.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Requests are served by a pool of threads (the endpoints block on the engine's lock).
DEFAULT_API_THREADS = 8
# PUT /v1/config reads its body itself (DocumentReader); its schema is published all the same.
DOCUMENT_BODY = {
    "required": True,
    "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/ApplianceConfig"}}},
}


def _pydantic_problems(errors: Sequence[Any]) -> list[Problem]:
    found = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        # FastAPI prefixes body errors with "body": the client sent the document, not a body.
        if loc[:1] == ("body",):
            loc = loc[1:]
        found.append(Problem(loc=loc, msg=str(error.get("msg", "invalid"))))
    return found


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        raise HTTPException(415, f"Content-Type must be {JSON_TYPE}")


def create_app(
    engine: Engine,
    status: StatusReader,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    threads: int = DEFAULT_API_THREADS,
    identity: TlsIdentity | None = None,
) -> FastAPI:
    """The API over one engine; ``status`` reads interfaces and counters. Bodies over
    ``max_body_bytes`` get 413; at most ``threads`` requests are served at once. ``identity``:
    the TLS identity ``PUT /v1/credentials`` replaces (None: not replaceable, 404)."""
    started = time.monotonic()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The pool blocking endpoints run in (anyio's default: 40 threads per event loop).
        to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(
        title="astara-appliance",
        version="1",
        description="Configuration and status of one Astara router appliance.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    reader = DocumentReader()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = Problems(detail=_pydantic_problems(exc.errors()))
        return JSONResponse(body.model_dump(mode="json"), status_code=422)

    def health(drift: bool | None) -> ServiceHealth:
        current = engine.current
        return ServiceHealth(
            **engine.health().model_dump(),
            uptime_s=time.monotonic() - started,
            router_id=current.router_id if current else None,
            drift=drift,
        )

    def after_apply(result: Health) -> ServiceHealth:
        # An apply that ran has just recorded the live state it produced: no drift by
        # definition. An unchanged document did nothing, so measure.
        return health(False if result.last_result == "applied" else engine.drift())

    @app.get(
        "/v1/health",
        response_model=ServiceHealth,
        description="What the engine last did; ``drift`` compares the live state with what "
        "the last apply produced (measured on each call).",
    )
    def get_health() -> ServiceHealth:
        return health(engine.drift())

    @app.get("/v1/interfaces", response_model=list[InterfaceStatus])
    def get_interfaces() -> list[InterfaceStatus]:
        return status.interfaces()

    @app.get("/v1/counters", response_model=Counters)
    def get_counters() -> Counters:
        return status.counters()

    @app.get(
        "/v1/config",
        response_model=ApplianceConfig,
        responses={404: {"model": Message, "description": "Nothing applied yet"}},
        description="The applied document; secrets are replaced by '**********'.",
    )
    def get_config() -> Any:
        current = engine.current
        if current is None:
            raise HTTPException(404, "no configuration has been applied")
        # Dumped in JSON mode, where pydantic masks SecretStr values.
        return JSONResponse(current.model_dump(mode="json"))

    @app.put(
        "/v1/config",
        response_model=ServiceHealth,
        dependencies=[Depends(_require_json)],
        responses={
            409: {"model": Conflict},
            413: {"model": Message, "description": "The body is larger than the limit"},
            415: {"model": Message},
            422: {"model": Problems},
            500: {"model": Failure},
        },
        description="Replace the whole configuration; converges or rolls back.",
        openapi_extra={"requestBody": DOCUMENT_BODY},
    )
    async def put_config(request: Request) -> Any:
        try:
            raw = json.loads(await request.body())
        except ValueError as exc:  # not JSON, or not UTF-8
            refused = Problems(detail=[Problem(loc=(), msg=f"the body is not JSON: {exc}")])
            return JSONResponse(refused.model_dump(mode="json"), status_code=422)
        return await to_thread.run_sync(apply_document, raw)

    def apply_document(raw: Any) -> Any:
        try:
            config = reader.read(raw, engine.current)
        except ValidationError as exc:
            refused = Problems(detail=_pydantic_problems(exc.errors()))
            return JSONResponse(refused.model_dump(mode="json"), status_code=422)
        found = problems(config)
        if found:
            return JSONResponse(Problems(detail=found).model_dump(mode="json"), status_code=422)
        try:
            result = engine.apply(config)
        except StaleGeneration as exc:
            body = Conflict(
                detail=exc.detail,
                applied_generation=exc.applied,
                requested_generation=exc.requested,
            )
            return JSONResponse(body.model_dump(mode="json"), status_code=409)
        except ApplyFailed as exc:
            return _failure(exc)
        return after_apply(result)

    @app.post(
        "/v1/reapply",
        response_model=ServiceHealth,
        responses={404: {"model": Message}, 500: {"model": Failure}},
        description="Apply the current configuration again through every step, as if from "
        "scratch: repairs drift.",
    )
    def post_reapply() -> Any:
        try:
            result = engine.reapply()
        except NothingApplied as exc:
            raise HTTPException(404, str(exc)) from exc
        except ApplyFailed as exc:
            return _failure(exc)
        return after_apply(result)

    @app.put(
        "/v1/credentials",
        response_model=Message,
        dependencies=[Depends(_require_json)],
        responses={404: {"model": Message}, 415: {"model": Message}, 422: {"model": Problems}},
        description="Replace this appliance's TLS certificate and key. The certificate must "
        "come from the CA the appliance trusts, be valid now and name its management address; "
        "new connections get it at once, open ones keep the old one.",
    )
    async def put_credentials(body: Credentials) -> Any:
        # On the event loop's thread, where handshakes happen: none sees the context half
        # loaded.
        if identity is None:
            raise HTTPException(404, "this appliance's credentials are not replaceable")
        try:
            identity.install(body.cert.encode(), body.key.get_secret_value().encode())
        except CredentialsRefused as exc:
            refused = Problems(detail=[Problem(loc=("body",), msg=str(exc))])
            return JSONResponse(refused.model_dump(mode="json"), status_code=422)
        return Message(detail="credentials replaced")

    return app


def _failure(exc: ApplyFailed) -> JSONResponse:
    body = Failure(step=exc.step, detail=exc.detail)
    return JSONResponse(body.model_dump(mode="json"), status_code=500)
