"""Baselines: learned after N successful runs, robust to outliers, moving with the job."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from jobs.models import Alert, Job, JobStats, RunState
from tests.helpers import finish_run

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)




@pytest.fixture
def traveller():
    with time_machine.travel(T0, tick=False) as t:
        yield t


def test_the_baseline_appears_with_the_10th_successful_run(make_job, traveller):
    job = make_job("nightly")
    for i in range(9):
        finish_run(job, traveller, duration=2.0 + i * 0.01, memory=50.0)
    job.refresh_from_db()
    assert job.baseline_runs == 0 and job.baseline_duration_p50 is None
    finish_run(job, traveller, duration=2.1, memory=52.0)
    job.refresh_from_db()
    assert job.baseline_runs == 10
    assert job.baseline_duration_p50 == pytest.approx(2.045, abs=0.01)
    assert job.baseline_duration_p95 >= job.baseline_duration_p50
    assert job.baseline_duration_mad is not None and job.baseline_duration_mad < 0.05
    assert job.baseline_memory_p50 == pytest.approx(50.0)
    assert job.baseline_updated_at == timezone.now()
    assert JobStats.objects.get(job=job).runs_since_baseline == 0
    # Failures neither count towards nor into the baseline.
    finish_run(job, traveller, state=RunState.FAILED, duration=60.0, exit_code=1)
    assert JobStats.objects.get(job=job).runs_since_baseline == 0


def test_the_baseline_moves_when_behaviour_changes_and_shrugs_off_outliers(make_job, traveller, settings):
    settings.BASELINE_WINDOW = 20
    job = make_job("export")
    for _ in range(9):
        finish_run(job, traveller, duration=2.0, memory=40.0)
    finish_run(job, traveller, duration=90.0, memory=900.0)  # one wild run inside the first window
    job.refresh_from_db()
    assert job.baseline_duration_p50 == pytest.approx(2.0)
    assert job.baseline_memory_p50 == pytest.approx(40.0)
    # The job now does twice the work, durably.
    for _ in range(20):
        finish_run(job, traveller, duration=4.0, memory=80.0)
    job.refresh_from_db()
    assert job.baseline_duration_p50 == pytest.approx(4.0)
    assert job.baseline_memory_p50 == pytest.approx(80.0)
    assert job.baseline_runs == 20


def test_no_judgement_before_the_job_has_a_baseline(make_job, traveller):
    job = make_job("young")
    for _ in range(5):
        finish_run(job, traveller, duration=1.0)
    finish_run(job, traveller, duration=100.0, memory=2000.0)
    finish_run(job, traveller, duration=0.01)
    assert not Alert.objects.filter(job=job).exists()


def test_recalculate_baselines_command(make_job, traveller, settings):
    settings.BASELINE_EVERY_RUNS = 1000  # never automatically: only the command recomputes
    a = make_job("a")
    b = make_job("b")
    for i in range(12):
        finish_run(a, traveller, duration=3.0 + (i % 3) * 0.1, memory=20.0)
    for _ in range(4):
        finish_run(b, traveller, duration=1.0)
    assert Job.objects.get(pk=a.pk).baseline_duration_p50 is None
    out = StringIO()
    call_command("recalculate_baselines", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["summary"].startswith("2 job(s): 1 baseline(s) recomputed, 1 still learning")
    by_job = {r["job"]: r for r in data["jobs"]}
    assert by_job["a"]["status"] == "updated" and by_job["a"]["runs"] == 12
    assert by_job["a"]["duration_p50"] == pytest.approx(3.1)
    assert by_job["b"] == {"job": "b", "status": "learning", "runs": 4, "previous_duration_p50": None}
    out = StringIO()
    summary = call_command("recalculate_baselines", "--job", "a", stdout=out)
    assert "1 job(s): 1 baseline(s) recomputed" in out.getvalue() + (summary or "")
    with pytest.raises(Exception, match="no job named"):
        call_command("recalculate_baselines", "--job", "nope")
