"""The dashboard: login, pages, actions (POST + CSRF), SVG pictures, and query counts."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard import timeline as tl
from jobs import alerts
from jobs.models import Alert, Job, JobRun, RunState
from tests.helpers import TEST_PASSWORD
from tests.test_api_helpers import default_slots, new_job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.com", TEST_PASSWORD)


@pytest.fixture
def browser(staff, redis_client) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def job(scripts_root) -> Job:
    default_slots()
    return new_job(scripts_root, "backup-db", cron_expression="30 2 * * *", wait_seconds=15, slot="heavy",
                   expected_duration_s=900)


def text(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


@pytest.mark.parametrize("path", ["/", "/jobs/", "/timeline/", "/alerts/", "/jobs/1/"])
def test_pages_need_a_staff_login(path, django_user_model):
    response = Client().get(path)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    user = django_user_model.objects.create_user("visitor", password=TEST_PASSWORD)
    client = Client()
    client.force_login(user)
    assert client.get(path).status_code == 302  # logged in but not staff: back to the admin login


def test_the_login_page_leads_to_the_dashboard(staff):
    client = Client()
    response = client.post("/admin/login/?next=/", {"username": "ops", "password": TEST_PASSWORD,
                                                     "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert "Overview" in text(client.get("/"))


def test_overview_shows_health_slots_running_and_alerts(browser, job, scripts_root):
    sick = new_job(scripts_root, "flaky-sync")
    Job.objects.filter(pk=sick.pk).update(health=Job.Health.CRITICAL, consecutive_failures=4)
    Job.objects.filter(pk=job.pk).update(health=Job.Health.HEALTHY)
    started = timezone.now() - dt.timedelta(seconds=95)
    run = JobRun.objects.create(job=job, scheduled_for=started, started_at=started, state=RunState.RUNNING,
                                slot_name="heavy")
    alerts.raise_alert(sick, Alert.Type.FAILURE, Alert.Severity.ERROR, "flaky-sync: exit code 2")
    html = text(browser.get("/"))
    assert re.search(r'<span class="num">1</span>\s*<span class="badge b-critical">■ critical', html)
    assert "flaky-sync" in html and "Failures in a row" in html
    for slot in ("default", "heavy", "light"):
        assert f"<h3>{slot}" in html
    assert 'aria-label="running: 0 / 5 runs"' in html
    assert f'action="/runs/{run.pk}/kill/"' in html and "backup-db" in html
    assert re.search(r'data-started="\d+">9\d s<', html)
    assert "flaky-sync: exit code 2" in html and "Acknowledge" in html
    assert 'href="http://127.0.0.1:5555/"' in html  # settings.FLOWER_URL
    assert html.count("csrfmiddlewaretoken") >= 3


def test_overview_shows_health_records_when_the_metrics_module_exists(browser, job):
    Job.objects.filter(pk=job.pk).update(health=Job.Health.WARNING)
    assert "backup-db" in text(browser.get("/"))


def test_pages_have_a_content_security_policy_and_no_external_assets(browser, job):
    for path in ("/", "/jobs/", f"/jobs/{job.pk}/", "/timeline/", "/alerts/"):
        response = browser.get(path)
        assert "script-src 'self'" in response["Content-Security-Policy"]
        assert response["X-Frame-Options"] == "DENY"
        html = text(response)
        assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html), path
        assert "<script>" not in html and " style=" not in html  # nothing inline that the CSP would block
    assert browser.get("/static/dashboard/dashboard.css").status_code == 200
    assert browser.get("/static/dashboard/dashboard.js").status_code == 200


def test_overview_query_count_does_not_grow_with_jobs(browser, scripts_root, django_assert_max_num_queries):
    default_slots()

    def populate(prefix: str, n: int) -> None:
        for i in range(n):
            made = new_job(scripts_root, f"{prefix}-{i}")
            Job.objects.filter(pk=made.pk).update(health=[Job.Health.CRITICAL, Job.Health.WARNING,
                                                          Job.Health.HEALTHY][i % 3])
            JobRun.objects.create(job=made, scheduled_for=timezone.now() - dt.timedelta(seconds=i),
                                  state=RunState.RUNNING, started_at=timezone.now(), slot_name="default")
            alerts.raise_alert(made, Alert.Type.FAILURE, Alert.Severity.ERROR, f"{prefix}-{i} failed")

    populate("few", 3)
    with CaptureQueriesContext(connection) as few:
        text(browser.get("/"))
    few_queries = len(few.captured_queries)  # read now: the next request clears the log
    populate("many", 40)
    with django_assert_max_num_queries(few_queries):
        html = text(browser.get("/"))
    assert "many-39" in html


def test_job_list_filters_paginates_and_keeps_queries_flat(browser, scripts_root, settings,
                                                           django_assert_max_num_queries):
    settings.DASHBOARD_PAGE_SIZE = 5
    default_slots()
    for i in range(3):
        new_job(scripts_root, f"a-{i}", slot="light")
    with CaptureQueriesContext(connection) as few:
        text(browser.get("/jobs/"))
    few_queries = len(few.captured_queries)  # read now: the next request clears the log
    for i in range(12):
        new_job(scripts_root, f"b-{i:02d}")
    with django_assert_max_num_queries(few_queries):
        html = text(browser.get("/jobs/"))
    assert "page 1 of 3 (15 in all)" in html
    assert "b-04" in text(browser.get("/jobs/?page=2"))
    filtered = text(browser.get("/jobs/?slot=light"))
    assert "a-2" in filtered and "b-00" not in filtered
    bad = text(browser.get("/jobs/?status=sleeping"))
    assert "status:" in bad and "No jobs match" in bad


def test_job_page_shows_runs_and_charts_against_the_baseline(browser, job):
    Job.objects.filter(pk=job.pk).update(baseline_runs=20, baseline_duration_p50=800, baseline_duration_p95=950,
                                         baseline_memory_p50=200, baseline_memory_p95=260)
    now = timezone.now().replace(microsecond=0)
    for i in range(30):
        JobRun.objects.create(job=job, scheduled_for=now - dt.timedelta(days=i),
                              state=RunState.FAILED if i == 3 else RunState.SUCCEEDED,
                              duration_s=780 + i, peak_memory_mb=210, exit_code=1 if i == 3 else 0)
    html = text(browser.get(f"/jobs/{job.pk}/"))
    assert html.count('<svg class="chart"') == 2
    assert "baseline band 800–950 s" in html and "30 recent runs, 1 failed" in html
    assert html.count("<circle") >= 29 and "stroke=\"#b71c1c\"" in html  # a cross marks the failure
    assert "page 1 of 2 (30 in all)" in html and "▶ Run now" in html
    assert f"/admin/jobs/jobrun/?job__id__exact={job.pk}" in html
    assert f"/admin/jobs/alert/?job__id__exact={job.pk}" in html


def test_job_page_query_count_does_not_grow_with_runs(browser, job, django_assert_max_num_queries):
    now = timezone.now()
    JobRun.objects.create(job=job, scheduled_for=now, state=RunState.SUCCEEDED, duration_s=1)
    with CaptureQueriesContext(connection) as few:
        text(browser.get(f"/jobs/{job.pk}/"))
    few_queries = len(few.captured_queries)  # read now: the next request clears the log
    JobRun.objects.bulk_create(JobRun(job=job, scheduled_for=now - dt.timedelta(minutes=i), duration_s=i,
                                      state=RunState.SUCCEEDED) for i in range(1, 200))
    with django_assert_max_num_queries(few_queries):
        text(browser.get(f"/jobs/{job.pk}/"))


def test_unknown_job_is_404(browser):
    assert browser.get("/jobs/987654/").status_code == 404


def test_run_now_button_starts_one_run_per_form(browser, job):
    page = text(browser.get(f"/jobs/{job.pk}/"))
    token = re.search(r'name="token" value="([0-9a-f]{32})"', page).group(1)
    response = browser.post(f"/jobs/{job.pk}/run/", {"token": token})
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    browser.post(f"/jobs/{job.pk}/run/", {"token": token})  # double click / resubmitted form
    assert JobRun.objects.filter(job=job, trigger=JobRun.Trigger.MANUAL).count() == 1
    html = text(browser.get(f"/jobs/{job.pk}/"))
    assert "queued: it starts as soon as slot heavy admits it" in html
    run = JobRun.objects.get(job=job)
    assert f'data-run="{run.pk}"' in html


def test_actions_need_post_and_csrf(staff, job):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.get(f"/jobs/{job.pk}/run/").status_code == 405
    assert client.post(f"/jobs/{job.pk}/run/").status_code == 403  # no CSRF token
    assert not JobRun.objects.filter(job=job).exists()


def test_actions_need_the_permission(django_user_model, job):
    viewer = django_user_model.objects.create_user("viewer", password=TEST_PASSWORD, is_staff=True)
    client = Client()
    client.force_login(viewer)
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
    assert client.post(f"/jobs/{job.pk}/run/").status_code == 403
    assert not JobRun.objects.filter(job=job).exists()


def test_enable_disable_and_kill(browser, job):
    browser.post(f"/jobs/{job.pk}/enabled/", {"enabled": "0"})
    assert Job.objects.get(pk=job.pk).enabled is False
    browser.post(f"/jobs/{job.pk}/enabled/", {"enabled": "1"})
    assert Job.objects.get(pk=job.pk).enabled is True
    waiting = JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.QUEUED)
    browser.post(f"/jobs/{job.pk}/kill/")
    assert JobRun.objects.get(pk=waiting.pk).state == RunState.CANCELLED


def test_kill_a_running_run_from_the_overview(browser, job, redis_client):
    run = JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.RUNNING)
    response = browser.post(f"/runs/{run.pk}/kill/", {"next": "/"})
    assert response["Location"] == "/"
    assert redis_client.exists(f"smartcron:kill:{run.pk}")
    assert "stop requested" in text(browser.get("/"))


def test_next_must_stay_on_this_site(browser, job):
    run = JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.QUEUED)
    response = browser.post(f"/runs/{run.pk}/kill/", {"next": "https://evil.example.com/"})
    assert response["Location"] == "/"


def test_acknowledge_an_alert_with_a_note(browser, job, staff):
    alert = alerts.raise_alert(job, Alert.Type.TIMEOUT, Alert.Severity.ERROR, "backup-db timed out")
    response = browser.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "disk was slow", "next": "/"})
    assert response["Location"] == "/"
    alert.refresh_from_db()
    assert alert.acknowledged_by == staff and alert.ack_note == "disk was slow"
    html = text(browser.get("/alerts/"))
    assert "✓ acknowledged by ops" in html and "disk was slow" in html


def test_alerts_page_tabs(browser, job):
    a = alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "first problem")
    alerts.resolve_alerts(job)
    alerts.raise_alert(job, Alert.Type.MISSED, Alert.Severity.WARNING, "second problem")
    assert "first problem" not in text(browser.get("/alerts/"))
    assert "first problem" in text(browser.get("/alerts/?show=all"))
    alerts.acknowledge(Alert.objects.get(message="second problem"), None, "")
    assert "second problem" not in text(browser.get("/alerts/?show=unacknowledged"))
    assert a.pk


# --- timeline ------------------------------------------------------------------------------------------
def test_day_starts_of_cron_interval_and_time_zone_jobs(job, scripts_root):
    day = dt.date(2025, 1, 15)
    starts, some_days = tl.job_day_starts(job, day)
    assert list(starts) == [2 * 3600 + 30 * 60 + 15] and not some_days
    every = new_job(scripts_root, "every-90s", schedule_type="interval", interval_seconds=90, wait_seconds=30)
    starts, _ = tl.job_day_starts(every, day)
    assert len(starts) == 960 and all((tl.day_start(day) + s - 30) % 90 == 0 for s in starts[:5])
    paris = new_job(scripts_root, "paris", cron_expression="0 9 * * 1-5", timezone="Europe/Paris")
    starts, some_days = tl.job_day_starts(paris, day)
    assert list(starts) == [8 * 3600] and some_days  # 09:00 CET is 08:00 UTC in January


def test_busy_minutes_merge_and_wrap_midnight():
    import numpy as np

    assert tl.busy_minutes(np.array([0, 60]), 30) == [(0, 2)]
    assert tl.busy_minutes(np.array([86400 - 30]), 120) == [(0, 2), (1439, 1440)]
    assert tl.busy_minutes(np.array([10]), 10**6) == [(0, 1440)]


def test_timeline_shows_jobs_and_slot_collisions(browser, scripts_root):
    default_slots()
    for i in range(3):  # three long heavy jobs at 02:00 in a slot that allows two
        new_job(scripts_root, f"export-{i}", cron_expression="0 2 * * *", slot="heavy", expected_duration_s=1200)
    new_job(scripts_root, "manual-only", schedule_type="manual")
    html = text(browser.get("/timeline/"))
    assert '<svg class="timeline"' in html and 'role="img"' in html
    assert "export-0" in html and "manual-only" not in html
    assert "slot heavy: peak 3 runs at 02:00 UTC (limit 2)" in html
    assert "OVER THE LIMIT" in html and "over the runs limit for 20 min" in html
    assert "02:00:00–02:20:00" in html  # the over-limit window in the peaks table
    only_light = text(browser.get("/timeline/?slot=light"))
    assert "export-0" not in only_light


def test_timeline_reuses_the_computed_load_until_jobs_change(browser, scripts_root, monkeypatch):
    default_slots()
    new_job(scripts_root, "t1", cron_expression="0 * * * *")
    calls = []
    real = tl.planner.simulate
    monkeypatch.setattr(tl.planner, "simulate", lambda *a, **k: calls.append(1) or real(*a, **k))
    text(browser.get("/timeline/"))
    text(browser.get("/timeline/"))
    assert len(calls) == 1
    new_job(scripts_root, "t2", cron_expression="5 * * * *")
    text(browser.get("/timeline/"))
    assert len(calls) == 2


def test_timeline_query_count_does_not_grow_with_jobs(browser, scripts_root, settings,
                                                      django_assert_max_num_queries):
    settings.DASHBOARD_PAGE_SIZE = 10
    default_slots()
    for i in range(3):
        new_job(scripts_root, f"q-{i}")
    with CaptureQueriesContext(connection) as few:
        text(browser.get("/timeline/"))
    few_queries = len(few.captured_queries)  # read now: the next request clears the log
    for i in range(30):
        new_job(scripts_root, f"r-{i}")
    cache.clear()  # also the load computation, which reads every job in one query
    with django_assert_max_num_queries(few_queries):
        text(browser.get("/timeline/"))
