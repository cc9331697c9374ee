# Astara's panels in Horizon's admin dashboard: copy into openstack_dashboard/local/enabled/.
PANEL_GROUP = "astara"
PANEL_GROUP_NAME = "Astara"
PANEL_GROUP_DASHBOARD = "admin"
# The plugin's templates and static files (once for both panels).
ADD_INSTALLED_APPS = ["astara.dashboard"]
