"""Dashboard routes (namespace ``dashboard``), mounted at the site root."""

from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("jobs/<int:pk>/run/", views.job_run_now, name="job-run"),
    path("jobs/<int:pk>/enabled/", views.job_set_enabled, name="job-enabled"),
    path("jobs/<int:pk>/kill/", views.job_kill, name="job-kill"),
    path("runs/<int:pk>/kill/", views.run_kill, name="run-kill"),
    path("alerts/", views.alert_list, name="alerts"),
    path("alerts/<int:pk>/acknowledge/", views.alert_acknowledge, name="alert-ack"),
    path("timeline/", views.timeline, name="timeline"),
]
