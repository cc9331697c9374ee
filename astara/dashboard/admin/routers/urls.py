from django.urls import re_path

from astara.dashboard.admin.routers import views

urlpatterns = [
    re_path(r"^$", views.IndexView.as_view(), name="index"),
    re_path(r"^(?P<router_id>[^/]+)/$", views.DetailView.as_view(), name="detail"),
    re_path(r"^(?P<router_id>[^/]+)/rebuild/$", views.RebuildView.as_view(), name="rebuild"),
]
