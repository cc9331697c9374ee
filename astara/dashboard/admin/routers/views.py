from __future__ import annotations

from typing import Any

from django.urls import reverse, reverse_lazy
from django.utils.translation import gettext_lazy as _
from horizon import exceptions, forms, tables, views

from astara.dashboard import api
from astara.dashboard.admin.routers import forms as router_forms
from astara.dashboard.admin.routers import tables as router_tables


class IndexView(tables.DataTableView):
    table_class = router_tables.RoutersTable
    template_name = "horizon/common/_data_table_view.html"
    page_title = _("Astara Routers")

    def get_data(self) -> list[api.Router]:
        try:
            return api.routers(self.request)
        except api.ApiError as exc:
            exceptions.handle(self.request, _("Could not list routers: %s") % exc)
            return []


class DetailView(views.HorizonTemplateView):
    template_name = "astara/routers/detail.html"
    page_title = _("Router {{ router.id }}")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        try:
            context["router"] = api.router(self.request, kwargs["router_id"])
        except api.ApiError as exc:
            exceptions.handle(
                self.request, str(exc), redirect=reverse("horizon:admin:astara_routers:index")
            )
        return context


class RebuildView(forms.ModalFormView):
    form_class = router_forms.RebuildForm
    template_name = "astara/routers/rebuild.html"
    ajax_template_name = "horizon/common/_modal_form.html"
    modal_id = "rebuild_router_modal"
    modal_header = _("Rebuild Router")
    submit_label = _("Rebuild")
    submit_url = "horizon:admin:astara_routers:rebuild"
    success_url = reverse_lazy("horizon:admin:astara_routers:index")
    page_title = _("Rebuild Router")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["submit_url"] = reverse(self.submit_url, args=[self.kwargs["router_id"]])
        return context

    def get_initial(self) -> dict[str, Any]:
        return {"router_id": self.kwargs["router_id"]}
