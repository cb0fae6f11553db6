"""Keep exactly one django-celery-beat PeriodicTask per schedulable job.

Every job save/enable/disable/delete goes through :func:`sync_job` (post_save and
post_delete signals); :func:`sync_all` repairs everything after bulk changes and calls
``PeriodicTasks.update_changed()``, without which beat would never notice a
``queryset.update()``.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from jobs import schedule as sched
from jobs.models import Job

TICK_TASK = "jobs.tick"
NAME_PREFIX = "smartcron:job:"
RECONCILE_NAME = "smartcron:reconcile"


def task_name(job_id: int) -> str:
    return f"{NAME_PREFIX}{job_id}"


def _crontab(expr: str, tz: str) -> CrontabSchedule:
    fields = sched.cron_fields(expr)
    existing = CrontabSchedule.objects.filter(**fields)
    for crontab in existing:
        if str(crontab.timezone) == tz:
            return crontab
    return CrontabSchedule.objects.create(timezone=tz, **fields)


@transaction.atomic
def sync_job(job: Job) -> PeriodicTask | None:
    """Create, update or delete the job's PeriodicTask; return it (None when not ticked)."""
    name = task_name(job.pk)
    spec = job.beat_crontab() if job.schedulable else None
    if spec is None:
        PeriodicTask.objects.filter(name=name).delete()
        return None
    expr, tz = spec
    crontab = _crontab(expr, tz)
    task = PeriodicTask.objects.filter(name=name).first()
    wanted = {
        "task": TICK_TASK,
        "crontab": crontab,
        "interval": None,
        "args": json.dumps([job.pk]),
        "queue": settings.DISPATCH_QUEUE,
        "enabled": True,
        "description": f"Smart Cron tick for job {job.name}",
    }
    if task is None:
        task = PeriodicTask.objects.create(name=name, **wanted)
        Job.objects.filter(pk=job.pk).update(schedule_since=timezone.now())
        return task
    changed = [k for k, v in wanted.items() if getattr(task, k) != v]
    if changed:
        for key in changed:
            setattr(task, key, wanted[key])
        task.save()
        if "crontab" in changed or "enabled" in changed:
            Job.objects.filter(pk=job.pk).update(schedule_since=timezone.now())
    return task


def remove_job(job_id: int) -> None:
    PeriodicTask.objects.filter(name=task_name(job_id)).delete()


def ensure_system_task(name: str, task: str, *, description: str, every_seconds: int | None = None,
                       cron: str | None = None, enabled: bool = True) -> PeriodicTask:
    """Create or update one of Smart Cron's own periodic tasks (UTC, dispatch queue); idempotent."""
    from django_celery_beat.models import IntervalSchedule

    if (every_seconds is None) == (cron is None):
        raise ValueError("give exactly one of every_seconds and cron")
    schedule: dict = {"interval": None, "crontab": None}
    if every_seconds is not None:
        schedule["interval"], _ = IntervalSchedule.objects.get_or_create(every=every_seconds,
                                                                         period=IntervalSchedule.SECONDS)
    else:
        schedule["crontab"] = _crontab(cron, "UTC")
    periodic, _ = PeriodicTask.objects.update_or_create(
        name=name,
        defaults={"task": task, "args": "[]", "queue": settings.DISPATCH_QUEUE, "enabled": enabled,
                  "description": description, **schedule},
    )
    return periodic


def ensure_reconciler() -> PeriodicTask:
    """The periodic reconciler (lease reclaim, stuck runs, missed ticks)."""
    return ensure_system_task(RECONCILE_NAME, "jobs.reconcile", every_seconds=settings.RECONCILE_SECONDS,
                              description="Smart Cron reconciler: reclaim dead leases, close stuck runs")


PEER_REFRESH_NAME = "smartcron:peer-refresh"


def ensure_peer_refresh() -> PeriodicTask | None:
    """A daily refresh of the peer's schedule when a peer is configured (03:17 UTC)."""
    if not getattr(settings, "PEER_URL", ""):
        PeriodicTask.objects.filter(name=PEER_REFRESH_NAME).delete()
        return None
    return ensure_system_task(PEER_REFRESH_NAME, "discovery.refresh_peer", cron="17 3 * * *",
                              description="Smart Cron: daily refresh of the peer server's schedule")


def sync_all() -> dict[str, int]:
    """Repair the whole mapping (after bulk changes); returns counts."""
    before = set(PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).values_list("name", flat=True))
    kept = 0
    for job in Job.objects.select_related("slot"):
        kept += sync_job(job) is not None
    valid = {task_name(pk) for pk in Job.objects.schedulable().values_list("pk", flat=True)}
    orphans = PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).exclude(name__in=valid)
    orphans.delete()
    after = set(PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).values_list("name", flat=True))
    removed = len(before - after)
    ensure_reconciler()
    ensure_peer_refresh()
    PeriodicTasks.update_changed()
    return {"ticked": kept, "removed": removed}


def set_enabled(queryset, enabled: bool) -> int:
    """Bulk enable/disable (admin actions, API) keeping beat in step."""
    n = queryset.update(enabled=enabled, updated_at=timezone.now())
    for job in queryset.model.objects.filter(pk__in=list(queryset.values_list("pk", flat=True))).select_related("slot"):
        sync_job(job)
    PeriodicTasks.update_changed()
    return n
