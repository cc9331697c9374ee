"""The rebuild form: a new instance for the router, with an image choice."""

from __future__ import annotations

import logging
from typing import Any

from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from horizon import exceptions, forms, messages
from openstack_dashboard.api import glance

from astara.dashboard import api

LOG = logging.getLogger(__name__)
KEEP = "__keep__"
CONFIGURED = "__configured__"


class RebuildForm(forms.SelfHandlingForm):
    router_id = forms.CharField(widget=forms.HiddenInput())
    image = forms.ChoiceField(
        label=_("Image"),
        help_text=_("The router keeps this image for later replacements too."),
    )

    def __init__(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        choices = [(KEEP, _("Keep the router's image")), (CONFIGURED, _("The configured image"))]
        try:
            images, _more, _prev = glance.image_list_detailed(request)
            choices += [(image.id, image.name or image.id) for image in images]
        except Exception:  # no image service (or it is down): the other choices still work
            LOG.warning("rebuild form: Glance could not list images", exc_info=True)
            messages.warning(request, _("The image service could not list images."))
        self.fields["image"].choices = choices

    def handle(self, request: Any, data: dict[str, Any]) -> bool:
        image = data["image"]
        try:
            api.rebuild(
                request,
                data["router_id"],
                None if image == CONFIGURED else image,
                keep_image=image == KEEP,
            )
        except api.ApiError as exc:
            exceptions.handle(
                request,
                _("Rebuild refused: %s") % exc,
                redirect=reverse("horizon:admin:astara_routers:index"),
            )
            return False
        messages.success(request, _("Rebuilding router %s.") % data["router_id"])
        return True
