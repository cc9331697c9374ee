# Admin > Astara > Routers: every router, its appliance, and the operator's actions.
PANEL = "astara_routers"
PANEL_DASHBOARD = "admin"
PANEL_GROUP = "astara"
ADD_PANEL = "astara.dashboard.admin.routers.panel.Routers"
