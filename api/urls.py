"""Routes of /api/v1/ (namespace ``api``)."""

from __future__ import annotations

from django.conf import settings
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from api import schema, views  # noqa: F401  (schema registers the OpenAPI security schemes)
from api.errors import not_found

app_name = "api"

router = SimpleRouter()
router.register("jobs", views.JobViewSet, basename="job")
router.register("runs", views.RunViewSet, basename="run")
router.register("alerts", views.AlertViewSet, basename="alert")

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="root"),
    path("slots/", views.SlotListView.as_view(), name="slots"),
    path("health/", views.HealthView.as_view(), name="health"),
    path("trends/", views.TrendsView.as_view(), name="trends"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    *router.urls,
]
# Swagger UI and ReDoc need their JavaScript served by this app (drf-spectacular-sidecar),
# never from a CDN; without the sidecar the browsable API is the documentation.
if "drf_spectacular_sidecar" in settings.INSTALLED_APPS:
    urlpatterns += [
        path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
        path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    ]
urlpatterns.append(re_path(r"^[\s\S]*$", not_found, name="not-found"))  # any path, newlines too
