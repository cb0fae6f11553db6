"""The JSON API: every endpoint, and every error class (400 naming the field, 401, 403, 404, 429)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from api.models import ApiKey
from jobs import alerts
from jobs.beat_sync import task_name
from jobs.models import Alert, Job, JobRun, RunState, Tag
from tests.helpers import TEST_PASSWORD
from tests.test_api_helpers import Api, default_slots, issue_key, new_job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    # The bad-key throttle counts in the default cache, shared by every test of the process.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def rw(db) -> Api:
    default_slots()
    return Api(issue_key("rw-test"))


@pytest.fixture
def ro(db) -> Api:
    return Api(issue_key("ro-test", ApiKey.Scope.READ_ONLY))


@pytest.fixture
def job(scripts_root, rw) -> Job:
    return new_job(scripts_root, "nightly-report", category="reporting", priority="high")


def assert_error(response, status: int, field: str | None = None, text: str = "") -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["detail"] and body["code"], body
    if field is not None:
        assert field in body["errors"], body
        assert text in " ".join(body["errors"][field]), body
    return body


# --- authentication -------------------------------------------------------------------------
def test_it_answers_401_without_a_key():
    response = Client().get("/api/v1/jobs/")
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", ["nonsense", "sck_0123456789ab_" + "x" * 43, "", "Bearer"])
def test_it_answers_401_to_a_wrong_key(rw, key):
    assert_error(Client().get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Bearer {key}x"), 401)


def test_it_accepts_the_x_api_key_header(db):
    api = Api(issue_key("via-header"), header="x-api-key")
    assert api.get("/api/v1/jobs/").status_code == 200


def test_two_different_keys_in_one_request_are_refused(db):
    a, b = issue_key("a"), issue_key("b")
    response = Client().get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Bearer {a}", HTTP_X_API_KEY=b)
    assert_error(response, 401)


def test_a_revoked_key_stops_working(db):
    key, raw = ApiKey.objects.issue("soon-revoked", scope=ApiKey.Scope.READ_ONLY)
    api = Api(raw)
    assert api.get("/api/v1/jobs/").status_code == 200
    assert key.revoke() is True
    assert key.revoke() is False
    assert_error(api.get("/api/v1/jobs/"), 401)


def test_an_expired_key_stops_working(db):
    raw = ApiKey.objects.issue("expired", scope=ApiKey.Scope.READ_ONLY,
                               expires_at=timezone.now() - dt.timedelta(seconds=1))[1]
    assert_error(Api(raw).get("/api/v1/jobs/"), 401)


def test_a_read_only_key_reads_but_may_not_write(ro, job):
    assert ro.get(f"/api/v1/jobs/{job.pk}/").status_code == 200
    body = assert_error(ro.post(f"/api/v1/jobs/{job.pk}/disable/"), 403)
    assert "read-write" in body["detail"]
    assert_error(ro.patch(f"/api/v1/jobs/{job.pk}/", {"description": "x"}), 403)
    assert Job.objects.get(pk=job.pk).enabled


def test_repeated_bad_keys_are_throttled_per_client_ip(settings, rw):
    settings.API_BAD_KEY_LIMIT = 3
    bad = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(3):
        assert_error(bad.get("/api/v1/jobs/", HTTP_AUTHORIZATION="Bearer sck_000000000000_" + "y" * 43), 401)
    response = bad.get("/api/v1/jobs/", HTTP_AUTHORIZATION="Bearer sck_000000000000_" + "z" * 43)
    assert_error(response, 429)
    assert int(response["Retry-After"]) >= 1
    # Once throttled, even a good key from that address waits: guessing is not rewarded.
    assert_error(bad.get("/api/v1/jobs/", **rw.headers), 429)
    # Other clients are not affected.
    assert Client(REMOTE_ADDR="198.51.100.7").get("/api/v1/jobs/", **rw.headers).status_code == 200


def test_forwarded_for_is_ignored_unless_proxies_are_configured(settings, rw):
    settings.API_BAD_KEY_LIMIT = 2
    wrong = {"HTTP_AUTHORIZATION": "Bearer wrong"}
    for n in range(3):  # rotating X-Forwarded-For does not escape the throttle
        response = Client().get("/api/v1/jobs/", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}", **wrong)
    assert response.status_code == 429
    cache.clear()
    settings.API_NUM_PROXIES = 1
    for n in range(3):  # behind one proxy, the forwarded address is the client
        response = Client().get("/api/v1/jobs/", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}", **wrong)
        assert response.status_code == 401


def test_last_use_is_recorded_at_most_once_a_minute(rw, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    key = ApiKey.objects.get(name="rw-test")
    assert key.last_used_at is None
    rw.get("/api/v1/jobs/")
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as ctx:
        rw.get("/api/v1/jobs/")
    assert not [q for q in ctx.captured_queries if q["sql"].startswith("UPDATE") and "api_apikey" in q["sql"]]
    time_machine.shift(dt.timedelta(seconds=61))
    rw.get("/api/v1/jobs/")
    assert ApiKey.objects.get(pk=key.pk).last_used_at > first


# --- sessions -----------------------------------------------------------------------------------
@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.com", TEST_PASSWORD)


def test_a_staff_session_reads_and_writes_with_csrf(staff, job):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.get("/api/v1/jobs/").status_code == 200
    response = client.post(f"/api/v1/jobs/{job.pk}/disable/", content_type="application/json")
    body = assert_error(response, 403)
    assert "CSRF" in body["detail"]
    client.get("/admin/")  # any page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(f"/api/v1/jobs/{job.pk}/disable/", content_type="application/json",
                           HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    assert Job.objects.get(pk=job.pk).enabled is False


def test_a_non_staff_session_is_refused(django_user_model, job):
    user = django_user_model.objects.create_user("visitor", password=TEST_PASSWORD)
    client = Client()
    client.force_login(user)
    assert_error(client.get("/api/v1/jobs/"), 403)


def test_a_staff_user_needs_the_change_permission_to_write(django_user_model, job):
    user = django_user_model.objects.create_user("viewer", password=TEST_PASSWORD, is_staff=True)
    client = Client()
    client.force_login(user)
    assert client.get(f"/api/v1/jobs/{job.pk}/").status_code == 200
    assert_error(client.post(f"/api/v1/jobs/{job.pk}/disable/", content_type="application/json"), 403)


# --- jobs ------------------------------------------------------------------------------------------
def test_jobs_list_is_paginated(rw, scripts_root, settings):
    settings.API_PAGE_SIZE = 2
    for n in range(5):
        new_job(scripts_root, f"job-{n}")
    body = rw.get("/api/v1/jobs/").json()
    assert body["count"] == 5 and len(body["results"]) == 2 and body["next"]
    assert [j["name"] for j in rw.get("/api/v1/jobs/", {"page": 3}).json()["results"]] == ["job-4"]
    assert len(rw.get("/api/v1/jobs/", {"page_size": 5}).json()["results"]) == 5


@pytest.mark.parametrize("params, field", [
    ({"page": "zero"}, "page"), ({"page": "0"}, "page"), ({"page": "99"}, "page"),
    ({"page_size": "0"}, "page_size"), ({"page_size": "100000"}, "page_size"),
    ({"enabled": "maybe"}, "enabled"), ({"status": "sleeping"}, "status"), ({"priority": "urgent"}, "priority"),
    ({"category": "fun"}, "category"), ({"health": "great"}, "health"), ({"search": "x" * 300}, "search"),
])
def test_bad_job_list_parameters_are_400_naming_them(rw, job, params, field):
    assert_error(rw.get("/api/v1/jobs/", params), 400, field)


def test_jobs_list_filters(rw, scripts_root, job):
    other = new_job(scripts_root, "queue-poke", slot="light", enabled=False, category="queue", priority="low",
                    description="pokes the mail queue")
    urgent = Tag.objects.create(name="urgent")
    other.tags.add(urgent)

    def names(**params) -> list[str]:
        response = rw.get("/api/v1/jobs/", params)
        assert response.status_code == 200, response.content
        return [j["name"] for j in response.json()["results"]]

    assert names() == ["nightly-report", "queue-poke"]
    assert names(enabled="false") == ["queue-poke"]
    assert names(enabled="true") == ["nightly-report"]
    assert names(slot="light") == ["queue-poke"]
    assert names(category="reporting") == ["nightly-report"]
    assert names(priority="low,high") == ["nightly-report", "queue-poke"]
    assert names(tag="urgent") == ["queue-poke"]
    assert names(search="MAIL") == ["queue-poke"]
    assert names(status="paused") == []
    assert names(name="nightly-report") == ["nightly-report"]


def test_jobs_list_query_count_does_not_grow_with_jobs(rw, scripts_root, django_assert_max_num_queries):
    tag = Tag.objects.create(name="t")
    for n in range(3):
        new_job(scripts_root, f"few-{n}").tags.add(tag)
    with CaptureQueriesContext(connection) as few:
        rw.get("/api/v1/jobs/")
    few_queries = len(few.captured_queries)  # read now: the next request clears the log
    for n in range(30):
        new_job(scripts_root, f"many-{n}").tags.add(tag)
    with django_assert_max_num_queries(few_queries):
        assert len(rw.get("/api/v1/jobs/").json()["results"]) == 33


def test_job_detail(rw, job):
    body = rw.get(f"/api/v1/jobs/{job.pk}/").json()
    assert body["name"] == "nightly-report" and body["slot"] == "default"
    assert len(body["next_runs"]) == 5
    assert "environment" not in body and body["environment_names"] == []


@pytest.mark.parametrize("path", ["/api/v1/jobs/999999/", "/api/v1/jobs/99999999999999999999999999/",
                                  "/api/v1/jobs/abc/", "/api/v1/jobs/-1/", "/api/v1/nothing-here/"])
def test_unknown_objects_and_paths_are_json_404(rw, path):
    assert_error(rw.get(path), 404)


def test_a_missing_trailing_slash_is_redirected_for_reads(rw):
    response = rw.get("/api/v1/jobs", {"enabled": "true"})
    assert response.status_code == 301 and response["Location"] == "/api/v1/jobs/?enabled=true"
    assert_error(rw.post("/api/v1/jobs", {}), 404)


def job_payload(scripts_root, **overrides) -> dict:
    script = scripts_root / "api-created.sh"
    script.write_text("#!/bin/bash\necho created\n")
    script.chmod(0o755)
    payload = {"name": "api-created", "script_path": str(script), "slot": "light", "schedule_type": "cron",
               "cron_expression": "15 3 * * *", "wait_seconds": 20, "environment": {"TARGET": "s3://bucket"}}
    payload.update(overrides)
    return payload


def test_create_a_job(rw, scripts_root):
    Tag.objects.create(name="nightly")
    response = rw.post("/api/v1/jobs/", job_payload(scripts_root, tags=["nightly"]))
    assert response.status_code == 201, response.content
    body = response.json()
    job = Job.objects.get(pk=body["id"])
    assert job.environment == {"TARGET": "s3://bucket"} and "TARGET" in body["environment_names"]
    assert "environment" not in body  # values are never returned
    assert list(job.tags.values_list("name", flat=True)) == ["nightly"]
    # The save signal put it on beat's schedule.
    assert PeriodicTask.objects.filter(name=task_name(job.pk)).exists()


@pytest.mark.parametrize("overrides, field, text", [
    ({"cron_expression": "*/5 * * *"}, "cron_expression", "expected 5 fields"),
    ({"cron_expression": "0 0 * * * *"}, "cron_expression", "no seconds field"),
    ({"wait_seconds": 60}, "wait_seconds", "59"),
    ({"cpu_weight": 5}, "cpu_weight", "between 0.1 and 2.0"),
    ({"timezone": "Mars/Base"}, "timezone", "unknown timezone"),
    ({"script_path": "/etc/passwd"}, "script_path", "outside the allowed script roots"),
    ({"script_path": "relative.sh"}, "script_path", "not an absolute path"),
    ({"slot": "nowhere"}, "slot", "does not exist"),
    ({"tags": ["no-such-tag"]}, "tags", "does not exist"),
    ({"name": "has spaces"}, "name", "letters, digits"),
    ({"schedule_type": "weekly", "daily_at": "03:00"}, "weekday", "weekday"),
    ({"schedule_type": "interval"}, "interval_seconds", "required"),
    ({"environment": {"1BAD": "x"}}, "environment", "invalid variable name"),
    ({"environment": ["not", "a", "dict"]}, "environment", ""),
    ({"timeout_seconds": 10**12}, "timeout_seconds", ""),
    ({"health": "healthy"}, "health", "read-only field"),
    ({"run_as_user": "root"}, "run_as_user", "read-only field"),
    ({"colour": "blue"}, "colour", "unknown field"),
])
def test_create_refuses_bad_fields_naming_them(rw, scripts_root, overrides, field, text):
    assert_error(rw.post("/api/v1/jobs/", job_payload(scripts_root, **overrides)), 400, field, text)
    assert not Job.objects.filter(name="api-created").exists()


def test_create_refuses_a_duplicate_name(rw, scripts_root, job):
    assert_error(rw.post("/api/v1/jobs/", job_payload(scripts_root, name=job.name)), 400, "name", "already exists")


def test_a_missing_required_field_is_named(rw, scripts_root):
    payload = job_payload(scripts_root)
    del payload["script_path"]
    assert_error(rw.post("/api/v1/jobs/", payload), 400, "script_path", "required")


@pytest.mark.parametrize("raw", ['{"name": ', "not json", "[1, 2]", "42", '"text"'])
def test_a_body_that_is_not_a_json_object_is_400(rw, raw):
    body = assert_error(rw.post("/api/v1/jobs/", raw=raw), 400)
    assert set(body["errors"]) & {"body", "non_field_errors"}


def test_malformed_json_names_the_body(rw):
    assert_error(rw.post("/api/v1/jobs/", raw='{"name": '), 400, "body", "JSON parse error")


def test_a_form_body_is_415_naming_the_content_type(rw):
    response = rw.client.post("/api/v1/jobs/", {"name": "x"}, **rw.headers)
    assert_error(response, 415, "Content-Type")


def test_patch_a_job(rw, job):
    response = rw.patch(f"/api/v1/jobs/{job.pk}/", {"wait_seconds": 42, "cron_expression": " 0  4 * * * "})
    assert response.status_code == 200, response.content
    job.refresh_from_db()
    assert job.wait_seconds == 42 and job.cron_expression == "0 4 * * *"
    assert response.json()["next_runs"][0].endswith(":42+00:00")


def test_patch_validates_against_the_stored_job(rw, job):
    # Switching to an interval schedule without giving the interval is caught by Job.clean().
    assert_error(rw.patch(f"/api/v1/jobs/{job.pk}/", {"schedule_type": "interval"}), 400, "interval_seconds")
    assert_error(rw.patch(f"/api/v1/jobs/{job.pk}/", {"wait_seconds": -1}), 400, "wait_seconds")
    assert_error(rw.patch(f"/api/v1/jobs/{job.pk}/", {"enabled": "perhaps"}), 400, "enabled")
    assert Job.objects.get(pk=job.pk).schedule_type == "cron"


def test_patch_of_an_auto_discovered_job_marks_the_fields_manual(rw, job):
    Job.objects.filter(pk=job.pk).update(auto_discovered=True)
    rw.patch(f"/api/v1/jobs/{job.pk}/", {"description": "set by hand"})
    assert "description" in Job.objects.get(pk=job.pk).manual_fields


def test_put_is_not_offered(rw, job):
    assert_error(rw.client.put(f"/api/v1/jobs/{job.pk}/", data="{}", content_type="application/json",
                               **rw.headers), 405)


def test_enable_and_disable_keep_beat_in_step(rw, job):
    assert PeriodicTask.objects.filter(name=task_name(job.pk)).exists()
    response = rw.post(f"/api/v1/jobs/{job.pk}/disable/")
    assert response.status_code == 200 and response.json()["enabled"] is False
    assert not PeriodicTask.objects.filter(name=task_name(job.pk)).exists()
    assert rw.post(f"/api/v1/jobs/{job.pk}/enable/").json()["enabled"] is True
    assert PeriodicTask.objects.filter(name=task_name(job.pk)).exists()


def test_run_now_with_an_idempotency_key_starts_one_run(rw, job):
    first = rw.post(f"/api/v1/jobs/{job.pk}/run/", HTTP_IDEMPOTENCY_KEY="deploy-4711")
    assert first.status_code == 202, first.content
    run_id = first.json()["id"]
    assert first["Location"] == f"/api/v1/runs/{run_id}/"
    again = rw.post(f"/api/v1/jobs/{job.pk}/run/", HTTP_IDEMPOTENCY_KEY="deploy-4711")
    assert again.status_code == 200 and again.json()["id"] == run_id
    assert again["Idempotent-Replayed"] == "true"
    assert JobRun.objects.filter(job=job).count() == 1
    run = JobRun.objects.get(pk=run_id)
    assert run.trigger == JobRun.Trigger.MANUAL and run.state == RunState.PENDING
    # Another key (another client) with the same string is another request.
    other = Api(issue_key("other-client")).post(f"/api/v1/jobs/{job.pk}/run/", HTTP_IDEMPOTENCY_KEY="deploy-4711")
    assert other.status_code == 202 and other.json()["id"] != run_id
    # No key: every request is a new run.
    assert rw.post(f"/api/v1/jobs/{job.pk}/run/").status_code == 202
    assert JobRun.objects.filter(job=job).count() == 3


@pytest.mark.parametrize("value", ["x" * 201, "tab\there", "é"])
def test_a_bad_idempotency_key_is_400_naming_the_header(rw, job, value):
    response = rw.post(f"/api/v1/jobs/{job.pk}/run/", HTTP_IDEMPOTENCY_KEY=value.encode().decode("latin-1"))
    assert_error(response, 400, "Idempotency-Key")
    assert not JobRun.objects.filter(job=job).exists()


def test_kill_a_job_cancels_its_waiting_runs(rw, job):
    run = JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.QUEUED)
    response = rw.post(f"/api/v1/jobs/{job.pk}/kill/")
    assert response.status_code == 200 and response.json() == {"stopped": 1}
    assert JobRun.objects.get(pk=run.pk).state == RunState.CANCELLED


def test_kill_of_a_running_run_asks_its_worker(rw, job, redis_client):
    run = JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.RUNNING)
    response = rw.post(f"/api/v1/runs/{run.pk}/kill/")
    assert response.status_code == 200 and response.json()["stopped"] is True
    assert redis_client.exists(f"smartcron:kill:{run.pk}")


# --- runs -------------------------------------------------------------------------------------------
@pytest.fixture
def runs(job):
    now = timezone.now().replace(microsecond=0)
    made = []
    for n in range(5):
        made.append(JobRun.objects.create(
            job=job, scheduled_for=now - dt.timedelta(hours=n), state=RunState.SUCCEEDED if n else RunState.FAILED,
            duration_s=10 + n, peak_memory_mb=50, output_tail=f"output of run {n}\n", exit_code=0 if n else 3))
    return made


def test_runs_list_newest_first_with_cursor(rw, runs, settings):
    settings.API_PAGE_SIZE = 2
    body = rw.get("/api/v1/runs/").json()
    assert [r["id"] for r in body["results"]] == [runs[4].pk, runs[3].pk]
    assert "output_tail" not in body["results"][0] and body["results"][0]["job_name"] == "nightly-report"
    following = rw.client.get(body["next"], **rw.headers).json()
    assert [r["id"] for r in following["results"]] == [runs[2].pk, runs[1].pk]


def test_runs_list_filters(rw, runs, job):
    def ids(**params) -> list[int]:
        response = rw.get("/api/v1/runs/", params)
        assert response.status_code == 200, response.content
        return sorted(r["id"] for r in response.json()["results"])

    assert ids(job=job.pk) == sorted(r.pk for r in runs)
    assert ids(state="failed") == [runs[0].pk]
    assert ids(state="failed,succeeded", job=job.pk + 1000) == []
    since = (runs[1].scheduled_for - dt.timedelta(minutes=1)).isoformat()
    assert ids(since=since) == sorted([runs[0].pk, runs[1].pk])
    assert ids(until=since.replace("+00:00", "")) == sorted(r.pk for r in runs[2:])
    assert ids(trigger="manual") == []


@pytest.mark.parametrize("params, field", [
    ({"state": "exploded"}, "state"), ({"job": "nightly"}, "job"), ({"job": "0"}, "job"),
    ({"since": "yesterday"}, "since"), ({"until": "2025-13-45T00:00:00"}, "until"),
    ({"cursor": "garbage"}, "cursor"), ({"trigger": "cron"}, "trigger"),
])
def test_bad_run_list_parameters_are_400_naming_them(rw, runs, params, field):
    assert_error(rw.get("/api/v1/runs/", params), 400, field)


def test_run_detail_has_the_output_tail(rw, runs):
    body = rw.get(f"/api/v1/runs/{runs[0].pk}/").json()
    assert body["output_tail"] == "output of run 0\n" and body["exit_code"] == 3 and body["state"] == "failed"


def test_killing_a_finished_run_is_a_conflict(rw, runs):
    assert_error(rw.post(f"/api/v1/runs/{runs[1].pk}/kill/"), 409)


def test_kill_of_a_waiting_run_cancels_it(rw, job):
    run = JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.PENDING)
    body = rw.post(f"/api/v1/runs/{run.pk}/kill/").json()
    assert body["stopped"] is True and body["run"]["state"] == "cancelled"


# --- alerts ---------------------------------------------------------------------------------------
@pytest.fixture
def alert(job) -> Alert:
    return alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "nightly-report: exit code 3")


def test_alerts_list_and_filters(rw, alert, job):
    alerts.raise_alert(None, Alert.Type.SYSTEM, Alert.Severity.WARNING, "disk filling up")
    assert rw.get("/api/v1/alerts/").json()["count"] == 2
    only = rw.get("/api/v1/alerts/", {"severity": "error", "open": "true", "job": job.pk}).json()["results"]
    assert [a["id"] for a in only] == [alert.pk] and only[0]["job_name"] == "nightly-report"
    assert rw.get("/api/v1/alerts/", {"acknowledged": "true"}).json()["count"] == 0
    assert_error(rw.get("/api/v1/alerts/", {"severity": "meh"}), 400, "severity")
    assert_error(rw.get("/api/v1/alerts/", {"open": "2"}), 400, "open")


def test_acknowledge_an_alert_with_a_note(rw, alert):
    response = rw.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {"note": "db restarted, watching"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["changed"] is True and body["alert"]["acknowledged_at"]
    assert body["alert"]["ack_note"] == "[API key rw-test] db restarted, watching"
    again = rw.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {"note": "again"}).json()
    assert again["changed"] is False and again["alert"]["ack_note"].endswith("watching")


def test_acknowledge_by_a_staff_session_records_the_user(staff, alert):
    client = Client()
    client.force_login(staff)
    response = client.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", data="{}", content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["alert"]["acknowledged_by"] == "ops"


@pytest.mark.parametrize("body, field", [({"note": "x" * 2001}, "note"), ({"nota": "typo"}, "nota"),
                                         ({"note": ["a"]}, "note")])
def test_acknowledge_refuses_bad_input(rw, alert, body, field):
    assert_error(rw.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", body), 400, field)
    assert Alert.objects.get(pk=alert.pk).acknowledged_at is None


def test_a_read_only_key_may_not_acknowledge(ro, alert):
    assert_error(ro.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {}), 403)


# --- slots, health, trends, schema ---------------------------------------------------------------
def test_slots_show_live_usage(rw, job, redis_client):
    from slots.leases import LeaseStore

    LeaseStore().acquire("default", 987, ttl=30, max_jobs=5, memory_mb=300, memory_budget_mb=3072)
    JobRun.objects.create(job=job, scheduled_for=timezone.now(), state=RunState.QUEUED, slot_name="default")
    body = {s["name"]: s for s in rw.get("/api/v1/slots/").json()}
    assert set(body) >= {"default", "heavy", "light"}
    assert body["default"]["running"] == 1 and body["default"]["memory_in_use_mb"] == 300
    assert body["default"]["waiting"] == 1 and body["default"]["live"] is True
    assert body["heavy"]["running"] == 0 and body["heavy"]["max_concurrent"] == 2


def test_slots_still_answer_when_redis_is_down(rw, monkeypatch):
    import redis

    import slots.leases

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    monkeypatch.setattr(slots.leases, "get_redis", lambda: dead)
    body = rw.get("/api/v1/slots/").json()
    assert body and all(s["live"] is False and s["running"] is None and s["error"] for s in body)


def test_health_summary(rw, job):
    response = rw.get("/api/v1/health/")
    assert response.status_code == 200, response.content
    assert isinstance(response.json(), list)
    assert_error(rw.get("/api/v1/health/", {"status": "bogus"}), 400, "status")


def test_performance_trends(rw, job):
    response = rw.get("/api/v1/trends/", {"slot": "default"})
    assert response.status_code == 200, response.content
    assert isinstance(response.json(), list)


def test_the_schema_needs_a_key_and_describes_the_api(rw):
    assert Client().get("/api/v1/schema/").status_code == 401
    assert_error(Client().get("/api/v1/schema/", HTTP_ACCEPT="application/json"), 401)
    response = rw.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/jobs/", "/api/v1/jobs/{id}/run/", "/api/v1/runs/{id}/", "/api/v1/alerts/{id}/acknowledge/",
                 "/api/v1/slots/", "/api/v1/health/", "/api/v1/trends/"):
        assert path in schema["paths"], path
    run_now = schema["paths"]["/api/v1/jobs/{id}/run/"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in run_now["parameters"])
    assert {"400", "401", "403", "404", "429"} <= set(run_now["responses"])
    assert {"bearerAuth", "apiKeyHeader"} <= set(schema["components"]["securitySchemes"])


def test_the_api_root_lists_the_endpoints(rw):
    body = rw.get("/api/v1/").json()
    assert body["jobs"].endswith("/api/v1/jobs/") and body["schema"].endswith("/api/v1/schema/")


def test_docs_are_served_without_a_cdn(staff):
    client = Client()
    client.force_login(staff)
    response = client.get("/api/v1/docs/")
    if response.status_code == 404:
        pytest.skip("drf-spectacular-sidecar is not installed: the browsable API is the documentation")
    html = response.content.decode()
    assert response.status_code == 200
    assert "cdn" not in html.lower() and "https://" not in html.split("<body")[0]
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200


def test_the_browsable_api_works_for_staff(staff, job):
    client = Client()
    client.force_login(staff)
    response = client.get("/api/v1/jobs/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and b"nightly-report" in response.content
