"""The registry: validation with clear messages, dependencies, migrations."""

import datetime as dt
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from jobs.models import Job, JobDependency, JobRun

pytestmark = pytest.mark.django_db

UTC = dt.UTC


@pytest.fixture
def job_factory(slots, scripts_root):
    script = scripts_root / "valid.sh"
    script.write_text("#!/bin/bash\necho ok\n")
    script.chmod(0o755)

    def make(**fields):
        data = {"name": "j", "script_path": str(script), "slot": slots["default"], "schedule_type": "cron",
                "cron_expression": "*/5 * * * *"}
        data.update(fields)
        return Job(**data)

    return make


def errors_of(job: Job) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as exc:
        job.full_clean()
    return exc.value.message_dict


def test_a_valid_job_passes(job_factory):
    job = job_factory()
    job.full_clean()


def test_bad_cron_names_the_field(job_factory):
    errs = errors_of(job_factory(cron_expression="*/5 * * *"))
    assert "expected 5 fields" in errs["cron_expression"][0]


def test_wait_seconds_out_of_range(job_factory):
    errs = errors_of(job_factory(wait_seconds=60))
    assert any("59" in m for m in errs["wait_seconds"])


@pytest.mark.parametrize("field", ["cpu_weight", "memory_weight"])
@pytest.mark.parametrize("value", [0.05, 2.5])
def test_weights_out_of_range(job_factory, field, value):
    errs = errors_of(job_factory(**{field: value}))
    assert any("between 0.1 and 2.0" in m for m in errs[field])


def test_script_outside_the_allowed_roots_is_refused(job_factory, tmp_path):
    outside = tmp_path / "evil.sh"
    outside.write_text("#!/bin/sh\n")
    errs = errors_of(job_factory(script_path=str(outside)))
    assert "outside the allowed script roots" in errs["script_path"][0]


def test_symlink_escaping_the_root_is_refused(job_factory, scripts_root, tmp_path):
    target = tmp_path / "target.sh"
    target.write_text("#!/bin/sh\n")
    link = scripts_root / "link.sh"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    errs = errors_of(job_factory(script_path=str(link)))
    assert "outside the allowed script roots" in errs["script_path"][0]


def test_interval_schedule_needs_an_interval(job_factory):
    errs = errors_of(job_factory(schedule_type="interval", interval_seconds=None))
    assert "interval_seconds is required" in errs["interval_seconds"][0]


def test_weekly_needs_a_weekday(job_factory):
    errs = errors_of(job_factory(schedule_type="weekly", daily_at=dt.time(2, 30), weekday=None))
    assert "weekday" in errs


def test_unknown_timezone(job_factory):
    errs = errors_of(job_factory(timezone="Europe/Atlantis"))
    assert "unknown timezone" in errs["timezone"][0]


def test_daily_and_weekly_schedules_become_cron(job_factory):
    assert job_factory(schedule_type="daily", daily_at=dt.time(2, 30)).effective_cron() == "30 2 * * *"
    assert job_factory(schedule_type="weekly", daily_at=dt.time(4, 0), weekday=6).effective_cron() == "0 4 * * 0"


def test_planned_second_comes_from_the_cron_grid(job_factory):
    job = job_factory(cron_expression="* * * * *", wait_seconds=7)
    tick = dt.datetime(2026, 1, 1, 12, 0, 0, 4000, tzinfo=UTC)
    assert job.planned_runs_for_tick(tick) == [dt.datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)]
    # A tick that arrives late still belongs to its minute.
    assert job.planned_runs_for_tick(tick + dt.timedelta(seconds=30)) == [
        dt.datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)]


def test_interval_job_runs_on_its_own_grid_whatever_the_tick_drift(job_factory):
    job = job_factory(schedule_type="interval", interval_seconds=20, wait_seconds=3)
    drifted = dt.datetime(2026, 1, 1, 12, 0, 0, 812000, tzinfo=UTC)
    assert [t.second for t in job.planned_runs_for_tick(drifted)] == [3, 23, 43]


def test_a_tick_plans_the_next_minute_ahead(job_factory):
    tick = dt.datetime(2026, 1, 1, 12, 0, 0, 4000, tzinfo=UTC)
    every_minute = job_factory(name="m", cron_expression="* * * * *", wait_seconds=0)
    assert every_minute.runs_to_plan_ahead(tick, 60) == [dt.datetime(2026, 1, 1, 12, 1, 0, tzinfo=UTC)]
    assert every_minute.runs_to_plan_ahead(tick, 0) == []  # turned off
    # A tick arriving 1.5 s early (beat's tolerance) still stands for 12:00.
    early = dt.datetime(2026, 1, 1, 11, 59, 58, 500000, tzinfo=UTC)
    assert every_minute.runs_to_plan_ahead(early, 60) == [dt.datetime(2026, 1, 1, 12, 1, 0, tzinfo=UTC)]
    hourly = job_factory(name="h", cron_expression="0 * * * *", wait_seconds=5)
    assert hourly.runs_to_plan_ahead(tick, 60) == []  # its next run is an hour away
    assert hourly.runs_to_plan_ahead(dt.datetime(2026, 1, 1, 12, 59, 0, 3000, tzinfo=UTC), 60) == [
        dt.datetime(2026, 1, 1, 13, 0, 5, tzinfo=UTC)]
    interval = job_factory(name="i", schedule_type="interval", interval_seconds=20, wait_seconds=3)
    assert [t.second for t in interval.runs_to_plan_ahead(tick, 60)] == [3, 23, 43]
    assert interval.runs_to_plan_ahead(tick, 60)[0].minute == 1


def test_one_run_per_tick_is_enforced_by_the_database(job_factory):
    from django.db import IntegrityError, transaction

    job = job_factory()
    job.save()
    moment = dt.datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)
    JobRun.objects.create(job=job, scheduled_for=moment)
    with pytest.raises(IntegrityError), transaction.atomic():
        JobRun.objects.create(job=job, scheduled_for=moment)


def test_dependency_cycles_are_refused_with_the_cycle_named(job_factory):
    a = job_factory(name="a")
    a.save()
    b = job_factory(name="b")
    b.save()
    c = job_factory(name="c")
    c.save()
    JobDependency.objects.create(job=a, depends_on=b)
    JobDependency.objects.create(job=b, depends_on=c)
    with pytest.raises(ValidationError) as exc:
        JobDependency.objects.create(job=c, depends_on=a)
    assert "c -> a -> b -> c" in str(exc.value)
    # Blocking links are mutual exclusion, not ordering: no cycle.
    JobDependency.objects.create(job=c, depends_on=a, kind="blocking")


def test_a_job_cannot_depend_on_itself(job_factory):
    a = job_factory(name="a")
    a.save()
    with pytest.raises(ValidationError, match="itself"):
        JobDependency.objects.create(job=a, depends_on=a)


def test_default_slots_exist_after_migrations():
    from slots.models import ExecutionSlot

    slots = {s.name: (s.max_concurrent, s.memory_budget_mb, s.cpu_percent) for s in ExecutionSlot.objects.all()}
    assert slots["default"] == (5, 3072, 80)
    assert slots["heavy"] == (2, 4096, 90)
    assert slots["light"] == (10, 1024, 50)


def test_models_match_migrations():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
