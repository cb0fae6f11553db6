"""Job <-> django-celery-beat: exactly one PeriodicTask per schedulable job."""

import json

import pytest
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from jobs import beat_sync
from jobs.models import Job

pytestmark = pytest.mark.django_db


def job_tasks():
    return PeriodicTask.objects.filter(name__startswith=beat_sync.NAME_PREFIX)


def test_a_cron_job_gets_one_tick_task(make_job):
    job = make_job("nightly", schedule_type="cron", cron_expression="30 2 * * *", timezone="Europe/Paris")
    task = PeriodicTask.objects.get(name=beat_sync.task_name(job.pk))
    assert task.task == "jobs.tick"
    assert task.queue == "dispatch"
    assert json.loads(task.args) == [job.pk]
    assert (task.crontab.minute, task.crontab.hour) == ("30", "2")
    assert str(task.crontab.timezone) == "Europe/Paris"
    assert task.interval is None
    job.save()
    assert job_tasks().count() == 1


def test_an_interval_job_is_ticked_by_a_grid_crontab(make_job):
    job = make_job("poller", schedule_type="interval", interval_seconds=300)
    task = PeriodicTask.objects.get(name=beat_sync.task_name(job.pk))
    assert task.crontab.minute == "*/5"


def test_disable_enable_and_delete(make_job):
    job = make_job("x", schedule_type="cron", cron_expression="* * * * *")
    assert job_tasks().count() == 1
    job.enabled = False
    job.save()
    assert job_tasks().count() == 0
    job.enabled = True
    job.save()
    assert job_tasks().count() == 1
    job.status = Job.Status.PAUSED
    job.save()
    assert job_tasks().count() == 0
    job.status = Job.Status.ACTIVE
    job.save()
    job.delete()
    assert job_tasks().count() == 0


def test_schedule_change_updates_the_task(make_job):
    job = make_job("x", schedule_type="cron", cron_expression="* * * * *")
    job.cron_expression = "15 * * * *"
    job.save()
    task = job_tasks().get()
    assert task.crontab.minute == "15"


def test_manual_jobs_are_not_ticked(make_job):
    make_job("m", schedule_type="manual")
    assert job_tasks().count() == 0


def test_bulk_changes_are_repaired_and_signalled(make_job):
    a = make_job("a", schedule_type="cron", cron_expression="* * * * *")
    make_job("b", schedule_type="cron", cron_expression="* * * * *")
    before = PeriodicTasks.last_change()
    Job.objects.filter(pk=a.pk).update(enabled=False)  # bypasses signals
    assert job_tasks().count() == 2
    counts = beat_sync.sync_all()
    assert counts == {"ticked": 1, "removed": 1}
    assert job_tasks().count() == 1
    assert PeriodicTasks.last_change() is not None
    assert before is None or PeriodicTasks.last_change() >= before
    assert PeriodicTask.objects.filter(name=beat_sync.RECONCILE_NAME, queue="dispatch").exists()


def test_set_enabled_bulk_action(make_job):
    make_job("a", schedule_type="cron", cron_expression="* * * * *", enabled=False)
    make_job("b", schedule_type="cron", cron_expression="* * * * *", enabled=False)
    assert beat_sync.set_enabled(Job.objects.all(), True) == 2
    assert job_tasks().count() == 2
    assert beat_sync.set_enabled(Job.objects.filter(name="a"), False) == 1
    assert job_tasks().count() == 1
