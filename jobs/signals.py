"""Job changes reach beat through these signals."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from jobs.models import Job

# Fields whose change cannot affect the beat schedule: saving only those (stats and
# health updates after every run) skips the sync.
_NON_SCHEDULE_FIELDS = frozenset({
    "last_run_at", "last_success_at", "last_state", "consecutive_failures", "health", "updated_at",
    "baseline_runs", "baseline_duration_p50", "baseline_duration_p95", "baseline_duration_mad",
    "baseline_memory_p50", "baseline_memory_p95", "baseline_memory_mad", "baseline_updated_at",
    "script_missing", "manual_fields",
})


@receiver(post_save, sender=Job, dispatch_uid="smartcron_job_beat_sync")
def job_saved(sender, instance: Job, created: bool, update_fields=None, raw=False, **kwargs) -> None:
    if raw:
        return
    if update_fields and set(update_fields) <= _NON_SCHEDULE_FIELDS:
        return
    if created and not instance.schedulable:
        return  # nothing to tick, nothing to remove (discovery creates jobs disabled)
    from jobs.beat_sync import sync_job

    sync_job(instance)


@receiver(post_delete, sender=Job, dispatch_uid="smartcron_job_beat_remove")
def job_deleted(sender, instance: Job, **kwargs) -> None:
    from jobs.beat_sync import remove_job

    job_id = instance.pk
    transaction.on_commit(lambda: remove_job(job_id))
