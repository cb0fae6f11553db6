from django.contrib import admin
from django.urls import include, path

from discovery.views import ScheduleAliasView, ScheduleView
from smartcron_project.views import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("metrics", include("jobs.prom")),  # Prometheus; access rules in jobs/prom.py
    # Before the api include: its catch-all answers unknown paths with a JSON 404.
    path("api/v1/schedule", ScheduleAliasView.as_view()),
    path("api/v1/schedule/", ScheduleView.as_view(), name="api-schedule"),
    path("api/v1/", include("api.urls")),
    path("", include("dashboard.urls")),
]
