from django.urls import re_path

from astara.dashboard.project.routers import views

urlpatterns = [re_path(r"^$", views.IndexView.as_view(), name="index")]
