"""Retention: archive then delete exactly the old final runs, in batches; scheduled daily."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import metrics, retention
from jobs.models import Alert, JobRun, JobStats, RunState

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def history(make_job):
    """40 old final runs, 3 old runs still active, 10 recent runs, an alert and a retry link."""
    job = make_job("history")
    other = make_job("other")
    now = timezone.now().replace(microsecond=0)
    runs = []
    for i in range(40):
        runs.append(JobRun(job=job if i % 2 else other, scheduled_for=now - dt.timedelta(days=120, minutes=i),
                           state=RunState.SUCCEEDED if i % 3 else RunState.FAILED, duration_s=1.0 + i,
                           exit_code=0, output_tail=f"line {i}\n" * 5, finished_at=now - dt.timedelta(days=120)))
    for i in range(3):
        runs.append(JobRun(job=job, scheduled_for=now - dt.timedelta(days=100, minutes=i), state=RunState.QUEUED))
    for i in range(10):
        runs.append(JobRun(job=job, scheduled_for=now - dt.timedelta(days=10, minutes=i), state=RunState.SUCCEEDED))
    JobRun.objects.bulk_create(runs)
    old = list(JobRun.objects.filter(scheduled_for__lt=now - dt.timedelta(days=110)).order_by("pk"))
    recent = JobRun.objects.filter(scheduled_for__gt=now - dt.timedelta(days=11)).first()
    JobRun.objects.filter(pk=recent.pk).update(retry_of=old[0])
    Alert.objects.create(job=job, run=old[1], type="failure", severity="error", message="old failure")
    JobStats.objects.create(job=job, runs_total=1234, n_succeeded=1200)
    keep = set(JobRun.objects.exclude(pk__in=[r.pk for r in old]).values_list("pk", flat=True))
    return {"old": old, "keep": keep, "recent": recent}


def test_prune_archives_then_deletes_exactly_the_old_runs(history, tmp_path):
    archive = tmp_path / "archive" / "runs.jsonl.gz"
    seen = []
    result = retention.prune(dt.timedelta(days=90), archive=archive, batch_size=7,
                             progress=lambda done, total: seen.append((done, total)))
    old_ids = [r.pk for r in history["old"]]
    assert result["pruned"] == result["archived"] == 40 and result["batches"] == 6
    assert seen[0] == (7, 40) and seen[-1] == (40, 40)
    assert set(JobRun.objects.values_list("pk", flat=True)) == history["keep"]
    rows = retention.read_archive(archive)
    assert [r["id"] for r in rows] == old_ids
    first = rows[0]
    assert first["job__name"] in ("history", "other") and first["output_tail"].startswith("line ")
    assert first["scheduled_for"] == history["old"][0].scheduled_for.isoformat()
    # References to pruned runs are cut, never cascaded; all-time counters are untouched.
    assert Alert.objects.get(message="old failure").run_id is None
    assert JobRun.objects.get(pk=history["recent"].pk).retry_of_id is None
    assert JobStats.objects.get(job__name="history").runs_total == 1234
    # Nothing left to prune: a second pass is a no-op and writes nothing more.
    size = archive.stat().st_size
    assert retention.prune(dt.timedelta(days=90), archive=archive)["pruned"] == 0
    assert archive.stat().st_size == size


def test_prune_history_command(history, tmp_path):
    archive = tmp_path / "cmd.jsonl.gz"
    out = StringIO()
    call_command("prune_history", "--older-than", "90d", "--dry-run", stdout=out)
    assert "dry run: 40 run(s)" in out.getvalue()
    assert JobRun.objects.count() == 53
    out = StringIO()
    call_command("prune_history", "--older-than", "90d", "--archive", str(archive), "--batch-size", "15", "--json",
                 stdout=out)
    data = json.loads(out.getvalue())
    assert (data["pruned"], data["batches"], data["archive"]) == (40, 3, str(archive))
    assert len(retention.read_archive(archive)) == 40
    with pytest.raises(CommandError, match="--older-than"):
        call_command("prune_history", "--older-than", "soon")
    out = StringIO()
    call_command("prune_history", "--older-than", "1d", "--no-archive", "--quiet", stdout=out)
    assert "pruned 10 run(s)" in out.getvalue()


@pytest.mark.parametrize(("text", "expected"), [("90d", dt.timedelta(days=90)), ("12h", dt.timedelta(hours=12)),
                                                ("2w", dt.timedelta(weeks=2)), ("30", dt.timedelta(days=30)),
                                                ("45m", dt.timedelta(minutes=45))])
def test_parse_age(text, expected):
    assert retention.parse_age(text) == expected


def test_the_daily_prune_and_the_watchdog_are_scheduled_once(transactional_db, settings):
    metrics.ensure_periodic_tasks()
    metrics.ensure_periodic_tasks()
    prune = PeriodicTask.objects.get(name=metrics.PRUNE_NAME)
    assert prune.task == "jobs.prune_history" and prune.queue == "dispatch" and prune.enabled
    assert (prune.crontab.minute, prune.crontab.hour) == ("17", "3")
    watchdog = PeriodicTask.objects.get(name=metrics.WATCHDOG_NAME)
    assert watchdog.task == "jobs.watchdog" and watchdog.interval.every == 60
    settings.RETENTION_DAYS = 0
    metrics.ensure_periodic_tasks()
    assert not PeriodicTask.objects.get(name=metrics.PRUNE_NAME).enabled
    assert PeriodicTask.objects.filter(name__in=[metrics.PRUNE_NAME, metrics.WATCHDOG_NAME]).count() == 2


def test_the_daily_task_archives_into_the_archive_dir(history, tmp_path, settings):
    settings.RETENTION_ARCHIVE_DIR = str(tmp_path / "arch")
    result = retention.prune_task()
    assert result["pruned"] == 40
    [archive] = (tmp_path / "arch").glob("runs-*.jsonl.gz")
    assert len(retention.read_archive(archive)) == 40
