"""The router tables: columns both panels show, actions only operators have."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy
from horizon import exceptions, tables

from astara.dashboard import api

# Which states are final (row refreshes stop) and good (True) or bad (False).
STATUS_CHOICES = (
    ("active", True),
    ("unmanaged", True),
    ("error", False),
    ("deleted", True),
)


class UpdateRow(tables.Row):
    """Rows in a passing state (booting, configuring...) refresh themselves."""

    ajax = True

    def get_data(self, request: Any, router_id: str) -> api.Router:
        return api.router(request, router_id)


def router_columns(detail_url: str | None) -> dict[str, tables.Column]:
    return {
        "id": tables.Column("id", verbose_name=_("Router"), link=detail_url),
        "project_id": tables.Column("project_id", verbose_name=_("Project")),
        "state": tables.Column(
            "state", verbose_name=_("State"), status=True, status_choices=STATUS_CHOICES
        ),
        "health": tables.Column("health", verbose_name=_("Health")),
        "instance_id": tables.Column("instance_id", verbose_name=_("Instance")),
        "generation": tables.Column("generation", verbose_name=_("Generation (applied / wanted)")),
        "managed": tables.Column("managed", verbose_name=_("Managed")),
        "debug": tables.Column("debug", verbose_name=_("Debug")),
        "last_error": tables.Column("last_error", verbose_name=_("Last Error")),
    }


class RouterAction(tables.BatchAction):
    """One API call per selected router; the API's refusal is shown as it is."""

    def call(self, request: Any, router_id: str) -> None:
        raise NotImplementedError

    def action(self, request: Any, obj_id: str) -> None:
        try:
            self.call(request, obj_id)
        except api.ApiError as exc:
            exceptions.handle(request, str(exc))
            raise


def _batch(name: str, present: str, past: str, call: Any, allowed: Any = None) -> type:
    """A RouterAction named ``name`` ("Poll Router"/"Polled Router"...)."""

    def action_present(count: int) -> str:
        return ngettext_lazy(f"{present} Router", f"{present} Routers", count)

    def action_past(count: int) -> str:
        return ngettext_lazy(f"{past} Router", f"{past} Routers", count)

    members: dict[str, Any] = {
        "name": name,
        "action_present": staticmethod(action_present),
        "action_past": staticmethod(action_past),
        "call": lambda self, request, router_id: call(request, router_id),
    }
    if allowed is not None:
        members["allowed"] = lambda self, request, router=None: router is None or allowed(router)
    return type(f"{name.title()}Action", (RouterAction,), members)


PollAction = _batch("poll", "Poll", "Polled", api.poll, lambda r: r.managed)
ManageAction = _batch(
    "manage",
    "Manage",
    "Managed",
    lambda rq, rid: api.manage(rq, rid, True),
    lambda r: not r.managed,
)
UnmanageAction = _batch(
    "unmanage",
    "Unmanage",
    "Unmanaged",
    lambda rq, rid: api.manage(rq, rid, False),
    lambda r: r.managed,
)
DebugAction = _batch(
    "debug", "Debug", "Debugging", lambda rq, rid: api.debug(rq, rid, True), lambda r: not r.debug
)
UndebugAction = _batch(
    "undebug",
    "Stop Debugging",
    "Stopped Debugging",
    lambda rq, rid: api.debug(rq, rid, False),
    lambda r: r.debug,
)


class RebuildAction(tables.LinkAction):
    name = "rebuild"
    verbose_name = _("Rebuild")
    url = "horizon:admin:astara_routers:rebuild"
    classes = ("ajax-modal", "btn-danger")

    def allowed(self, request: Any, router: api.Router | None = None) -> bool:
        return router is None or bool(router.managed)

    def get_link_url(self, datum: api.Router | None = None) -> str:
        return reverse(self.url, args=[datum.id]) if datum else ""
