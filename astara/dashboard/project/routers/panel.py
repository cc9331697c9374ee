from __future__ import annotations

import horizon
from django.utils.translation import gettext_lazy as _


class RouterStatus(horizon.Panel):
    name = _("Router Appliances")
    slug = "astara_router_status"
