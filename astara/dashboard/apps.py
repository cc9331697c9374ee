from django.apps import AppConfig


class AstaraDashboardConfig(AppConfig):
    """Its own label: Django's default ("dashboard") is taken by Horizon."""

    name = "astara.dashboard"
    label = "astara_dashboard"
