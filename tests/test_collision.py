"""The collision check shown when a job's time is saved."""

import pytest

from slots.collision import check

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_reports_the_peak_and_suggests_a_quiet_second(make_job):
    for i in range(3):
        make_job(f"busy-{i}", schedule_type="cron", cron_expression="0 * * * *", wait_seconds=0,
                 expected_duration_s=20, expected_memory_mb=300)
    job = make_job("newcomer", schedule_type="cron", cron_expression="0 * * * *", wait_seconds=5,
                   expected_duration_s=10, expected_memory_mb=100)
    result = check(job)
    assert result.peak_jobs == 4  # three busy jobs run 0-19 s, ours starts at 5
    assert result.peak_memory_mb == pytest.approx(1000)
    assert result.suggested_wait_seconds >= 20
    assert result.suggested_peak_jobs == 1
    assert "Suggested second" in result.message(job.name)


def test_a_manual_job_has_no_collision(make_job):
    assert check(make_job("by-hand")) is None


def test_the_admin_shows_the_collision_on_save(make_job, admin_client, slots, scripts_root):
    for i in range(3):
        make_job(f"busy-{i}", schedule_type="cron", cron_expression="0 * * * *", wait_seconds=0,
                 expected_duration_s=20, expected_memory_mb=300)
    job = make_job("edited", schedule_type="cron", cron_expression="0 * * * *", wait_seconds=30,
                   expected_duration_s=10, expected_memory_mb=100)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/")
    form = page.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            data[name] = [getattr(v, "pk", v) for v in value]
        elif isinstance(value, (dict,)):
            data[name] = __import__("json").dumps(value)
        else:
            data[name] = getattr(value, "pk", value)
    for inline in page.context["inline_admin_formsets"]:
        mgmt = inline.formset.management_form
        for name in mgmt.fields:
            data[f"{inline.formset.prefix}-{name}"] = mgmt.initial.get(name, 0) if name != "TOTAL_FORMS" else 0
    data["wait_seconds"] = 3
    resp = admin_client.post(f"/admin/jobs/job/{job.pk}/change/", data, follow=True)
    assert resp.status_code == 200
    form = resp.context.get("adminform")
    assert form is None or not form.form.errors, form.form.errors
    texts = [str(m) for m in resp.context["messages"]]
    assert any("Suggested second" in t for t in texts), texts
