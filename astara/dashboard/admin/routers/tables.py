from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from horizon import tables

from astara.dashboard import tables as common


class RoutersTable(tables.DataTable):
    locals().update(common.router_columns("horizon:admin:astara_routers:detail"))

    class Meta:
        name = "astara_routers"
        verbose_name = _("Astara Routers")
        status_columns = ("state",)
        row_class = common.UpdateRow
        table_actions = (common.PollAction, common.ManageAction, common.UnmanageAction)
        row_actions = (
            common.RebuildAction,
            common.PollAction,
            common.ManageAction,
            common.UnmanageAction,
            common.DebugAction,
            common.UndebugAction,
        )
