from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from horizon import exceptions, tables

from astara.dashboard import api
from astara.dashboard import tables as common


class RouterStatusTable(tables.DataTable):
    locals().update(
        {k: v for k, v in common.router_columns(None).items() if k not in ("project_id", "debug")}
    )

    class Meta:
        name = "astara_router_status"
        verbose_name = _("Router Appliances")
        status_columns = ("state",)
        row_class = common.UpdateRow


class IndexView(tables.DataTableView):
    table_class = RouterStatusTable
    template_name = "horizon/common/_data_table_view.html"
    page_title = _("Router Appliances")

    def get_data(self) -> list[api.Router]:
        try:
            return api.routers(self.request, self.request.user.project_id)
        except api.ApiError as exc:
            exceptions.handle(self.request, _("Could not list routers: %s") % exc)
            return []
