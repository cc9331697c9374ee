from __future__ import annotations

import horizon
from django.utils.translation import gettext_lazy as _


class Routers(horizon.Panel):
    name = _("Routers")
    slug = "astara_routers"
    permissions = ("openstack.roles.admin",)
