"""The management API's routes: versioned REST and JSON, the OpenAPI document at
``/openapi.json``.

The caller's identity comes from the request environment, where keystonemiddleware (or, when
an operator chose it, the noauth middleware) put it: ``X-Identity-Status`` and the
``X-User-*``, ``X-Project-*`` and ``X-Roles`` headers, read through oslo.context. The version
document and the OpenAPI document are public; everything else needs a confirmed identity
(401 otherwise) that the policy allows (403 otherwise). A router of another project reads as
unknown (404), so its existence is not disclosed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from oslo_context.context import RequestContext
from oslo_policy import policy
from starlette.exceptions import HTTPException

from astara.orchestrator.api import models
from astara.orchestrator.api import policies as rules
from astara.orchestrator.control import Control, Refused

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": models.Error} for status in (400, 401, 403, 404, 409)
}
MAX_EVENTS = 1000
T = TypeVar("T")


class Unauthenticated(Exception):
    pass


def caller(request: Request) -> RequestContext:
    """The identity the auth middleware confirmed (in the WSGI environment), else 401."""
    environ = request.scope.get("wsgi_environ") or {}
    if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
        raise Unauthenticated()
    return RequestContext.from_environ(environ)


Caller = Annotated[RequestContext, Depends(caller)]


def actor_of(context: RequestContext) -> str:
    """Who asked, as the event log records it."""
    user = context.user_name or context.user_id or "unknown"
    project = context.project_name or context.project_id or "no project"
    return f"{user} (user {context.user_id}, project {project})"[:255]


def create_app(
    control: Control,
    enforcer: policy.Enforcer,
    www_authenticate: Callable[[], str | None] = lambda: None,
) -> FastAPI:
    """``www_authenticate``: the WWW-Authenticate header of a 401 (where to get a token)."""
    app = FastAPI(
        title="Astara management API",
        version="1.0",
        description="Routers, their instances, the workers, the circuit breaker and the "
        "event log of an Astara orchestrator, and the operator's actions on them.",
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,
    )

    def allowed(context: RequestContext, rule: str, project_id: str | None = None) -> bool:
        target = {"project_id": project_id or ""}
        return bool(enforcer.authorize(rule, target, context, do_raise=False))

    def authorize(context: RequestContext, rule: str, project_id: str | None = None) -> None:
        if not allowed(context, rule, project_id):
            raise Refused(403, f"policy does not allow {rule}")

    def router_project(router_id: str) -> str | None:
        try:
            return control.project_of(router_id)
        except Refused:
            return None

    def readable_router(context: RequestContext, router_id: str) -> None:
        """404, not 403, for a router the caller may not see."""
        if not allowed(context, rules.ROUTER_READ, router_project(router_id)):
            raise Refused(404, f"router {router_id} is not known to Astara")

    def act(context: RequestContext, rule: str, router_id: str, action: Callable[[str], T]) -> T:
        authorize(context, rule, router_project(router_id))
        return action(actor_of(context))

    @app.exception_handler(Refused)
    def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(models.Error(message=exc.detail).model_dump(), status_code=exc.status)

    @app.exception_handler(Unauthenticated)
    def unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        body = models.Error(message="authentication required: send a Keystone token (X-Auth-Token)")
        where = www_authenticate()
        headers = {"WWW-Authenticate": where} if where else None
        return JSONResponse(body.model_dump(), status_code=401, headers=headers)

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            models.Problem(loc=[str(p) for p in e["loc"]], msg=e["msg"]) for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems)
        body = models.Error(message=f"invalid request: {detail}", problems=problems)
        return JSONResponse(body.model_dump(), status_code=400)

    @app.exception_handler(HTTPException)
    def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(models.Error(message=str(exc.detail)).model_dump(), exc.status_code)

    @app.get("/", tags=["versions"], summary="API versions (public)")
    def versions(request: Request) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        return {
            "versions": [
                {
                    "id": "v1.0",
                    "status": "CURRENT",
                    "links": [{"rel": "self", "href": f"{base}/v1/"}],
                }
            ]
        }

    @app.get("/v1/routers", tags=["routers"])
    def list_routers(
        context: Caller,
        project_id: str | None = None,
        state: str | None = None,
        failing: Annotated[
            bool | None, Query(description="true: only routers with a last error")
        ] = None,
    ) -> models.RouterList:
        """Routers; a project's reader sees its own project's only."""
        if not allowed(context, rules.ROUTER_READ, project_id):
            authorize(context, rules.ROUTER_READ, context.project_id)
            if project_id not in (None, context.project_id):
                raise Refused(403, f"policy does not allow {rules.ROUTER_READ} for that project")
            project_id = context.project_id
        return models.RouterList(routers=control.routers(project_id, state, failing))

    @app.get("/v1/routers/{router_id}", tags=["routers"])
    def show_router(context: Caller, router_id: str) -> models.RouterDetail:
        """A router with its instances, its worker and its newest events."""
        readable_router(context, router_id)
        return control.router(router_id)

    @app.post("/v1/routers/{router_id}/rebuild", status_code=202, tags=["routers"])
    def rebuild(
        context: Caller,
        router_id: str,
        body: Annotated[models.RebuildRequest | None, Body()] = None,
    ) -> models.Accepted:
        """Replace the router's instance: the new one is built first, then takes over."""
        overrides = body.model_dump(include=body.model_fields_set) if body else {}
        return act(
            context,
            rules.ROUTER_REBUILD,
            router_id,
            lambda actor: control.rebuild(router_id, actor, overrides),
        )

    @app.post("/v1/routers/{router_id}/poll", status_code=202, tags=["routers"])
    def poll(context: Caller, router_id: str) -> models.Accepted:
        """Read the router from Neutron and its appliance now, and act on what differs."""
        return act(
            context, rules.ROUTER_POLL, router_id, lambda actor: control.poll(router_id, actor)
        )

    @app.post("/v1/routers/{router_id}/manage", tags=["routers"])
    def manage(context: Caller, router_id: str) -> models.RouterDetail:
        """Give the router back to Astara: it is reconciled at once."""
        return act(
            context,
            rules.ROUTER_MANAGE,
            router_id,
            lambda actor: control.set_managed(router_id, True, actor),
        )

    @app.post("/v1/routers/{router_id}/unmanage", tags=["routers"])
    def unmanage(context: Caller, router_id: str) -> models.RouterDetail:
        """Leave the router alone: no worker acts on it, the health loop neither watches nor
        replaces its instance, until it is managed again."""
        return act(
            context,
            rules.ROUTER_MANAGE,
            router_id,
            lambda actor: control.set_managed(router_id, False, actor),
        )

    @app.post("/v1/routers/{router_id}/debug", tags=["routers"])
    def debug(context: Caller, router_id: str, body: models.DebugRequest) -> models.RouterDetail:
        """Trace (or stop tracing) the router's steps: each observation and decision is
        logged, each action recorded in the event log."""
        return act(
            context,
            rules.ROUTER_DEBUG,
            router_id,
            lambda actor: control.set_debug(router_id, body.enabled, actor),
        )

    @app.get("/v1/projects/{project_id}", tags=["projects"])
    def show_project(context: Caller, project_id: str) -> models.Project:
        """A project's debug flag and how many routers it has."""
        authorize(context, rules.PROJECT_READ, project_id)
        return control.project(project_id)

    @app.post("/v1/projects/{project_id}/debug", tags=["projects"])
    def project_debug(
        context: Caller, project_id: str, body: models.DebugRequest
    ) -> models.Project:
        """Debug for every router of the project, also those created later."""
        authorize(context, rules.PROJECT_DEBUG, project_id)
        return control.set_project_debug(project_id, body.enabled, actor_of(context))

    @app.get("/v1/instances", tags=["instances"])
    def list_instances(context: Caller, router_id: str | None = None) -> models.InstanceList:
        """Instances (of one router) with their health as the health loop sees it."""
        if router_id is None:
            authorize(context, rules.ROUTER_READ)
        else:
            readable_router(context, router_id)
        return models.InstanceList(instances=control.instances(router_id))

    @app.get("/v1/workers", tags=["workers"])
    def list_workers(context: Caller) -> models.WorkerList:
        """Worker processes: their pid, what each thread steps, their queues."""
        authorize(context, rules.WORKER_READ)
        return models.WorkerList(workers=control.workers())

    @app.get("/v1/breaker", tags=["breaker"])
    def show_breaker(context: Caller) -> models.Breaker:
        """The replacement circuit breaker: open or closed, why, its thresholds."""
        authorize(context, rules.BREAKER_READ)
        return control.breaker()

    @app.post("/v1/breaker/reset", tags=["breaker"])
    def reset_breaker(context: Caller) -> models.Breaker:
        """Close the open breaker: dead instances are replaced again (as SIGUSR1 does)."""
        authorize(context, rules.BREAKER_RESET)
        return control.reset_breaker(actor_of(context))

    @app.get("/v1/events", tags=["events"])
    def list_events(
        context: Caller,
        router_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
    ) -> models.EventList:
        """The event log, newest first."""
        authorize(context, rules.EVENT_READ)
        return models.EventList(events=control.events(router_id, limit))

    @app.post("/v1/config/reload", tags=["config"])
    def reload(context: Caller) -> models.Reloaded:
        """Re-read the configuration files; apply the options marked mutable."""
        authorize(context, rules.CONFIG_RELOAD)
        return control.reload_config(actor_of(context))

    return app
