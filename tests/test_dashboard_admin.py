"""The admin side of the operator surfaces: job inlines, links, actions (recalculate baseline)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from jobs import alerts
from jobs.models import Alert, Job, JobDependency, JobRun, RunState, Tag
from tests.helpers import TEST_PASSWORD
from tests.test_api_helpers import default_slots, new_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", TEST_PASSWORD))
    return client


@pytest.fixture
def jobs(scripts_root) -> tuple[Job, Job]:
    default_slots()
    return new_job(scripts_root, "extract"), new_job(scripts_root, "load")


def test_the_job_form_has_tag_and_dependency_inlines_and_links(admin_client, jobs):
    extract, load = jobs
    tag = Tag.objects.create(name="etl")
    load.tags.add(tag)
    JobDependency.objects.create(job=load, depends_on=extract)
    JobRun.objects.create(job=load, scheduled_for=timezone.now(), state=RunState.SUCCEEDED)
    alerts.raise_alert(load, Alert.Type.FAILURE, Alert.Severity.ERROR, "load failed")
    html = admin_client.get(f"/admin/jobs/job/{load.pk}/change/").content.decode()
    assert 'id="Job_tags-group"' in html and 'id="dependencies-group"' in html
    assert f"/admin/jobs/jobrun/?job__id__exact={load.pk}" in html and "runs (1)" in html
    assert f"/admin/jobs/alert/?job__id__exact={load.pk}" in html and "alerts (1 open)" in html
    assert f'href="/jobs/{load.pk}/"' in html


def test_tags_are_saved_through_the_inline(admin_client, jobs):
    extract, _ = jobs
    tag = Tag.objects.create(name="nightly")
    form = admin_client.get(f"/admin/jobs/job/{extract.pk}/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "tags"}
    data.update({"slot": extract.slot_id, "environment": "{}", "manual_fields": "[]",
                 "Job_tags-TOTAL_FORMS": "1", "Job_tags-INITIAL_FORMS": "0", "Job_tags-0-tag": tag.pk,
                 "dependencies-TOTAL_FORMS": "0", "dependencies-INITIAL_FORMS": "0"})
    data = {k: ("" if v is None else v) for k, v in data.items()}
    response = admin_client.post(f"/admin/jobs/job/{extract.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert list(Job.objects.get(pk=extract.pk).tags.values_list("name", flat=True)) == ["nightly"]


def test_recalculate_baseline_action(admin_client, jobs, monkeypatch):
    calls = []

    def recalculate(queryset):
        calls.append(sorted(queryset.values_list("name", flat=True)))
        return [{"job": "extract", "status": "updated"}, {"job": "load", "status": "learning"}]

    monkeypatch.setattr("jobs.baselines.recalculate", recalculate)
    response = admin_client.post("/admin/jobs/job/", {"action": "recalculate_baseline",
                                                      "_selected_action": [j.pk for j in jobs]}, follow=True)
    assert calls == [["extract", "load"]]
    text = response.content.decode()
    assert "1 baseline(s) recalculated" in text and "Not enough successful runs yet for: load" in text


def test_the_real_recalculate_runs(admin_client, jobs):
    response = admin_client.post("/admin/jobs/job/", {"action": "recalculate_baseline",
                                                      "_selected_action": [jobs[0].pk]}, follow=True)
    assert "recalculated" in response.content.decode()


def test_enable_disable_and_run_now_actions(admin_client, jobs):
    extract, load = jobs
    admin_client.post("/admin/jobs/job/", {"action": "disable_jobs", "_selected_action": [extract.pk, load.pk]})
    assert not Job.objects.filter(enabled=True).exists()
    admin_client.post("/admin/jobs/job/", {"action": "enable_jobs", "_selected_action": [extract.pk]})
    assert list(Job.objects.filter(enabled=True).values_list("name", flat=True)) == ["extract"]
    admin_client.post("/admin/jobs/job/", {"action": "run_now", "_selected_action": [load.pk]})
    assert JobRun.objects.filter(job=load, trigger=JobRun.Trigger.MANUAL).count() == 1


def test_acknowledge_alerts_action(admin_client, jobs):
    alert = alerts.raise_alert(jobs[0], Alert.Type.FAILURE, Alert.Severity.ERROR, "boom")
    admin_client.post("/admin/jobs/alert/", {"action": "acknowledge_alerts", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None and alert.acknowledged_by.username == "root"
