# Project > Network > Router Appliances: the project's own routers and their status.
PANEL = "astara_router_status"
PANEL_DASHBOARD = "project"
PANEL_GROUP = "network"
ADD_PANEL = "astara.dashboard.project.routers.panel.RouterStatus"
