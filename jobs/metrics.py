"""Wiring of the observability pipeline.

- :func:`on_run_finished` is the ``jobs.hooks`` callback run once per run reaching a final
  state (including runs the reconciler marks LOST: a killed worker fires no Celery signal,
  but the reconciler goes through ``services.close_run`` -> ``record_finished`` -> hooks):
  stats -> baseline (every N successes) -> anomaly checks -> consecutive failures and the
  circuit breaker -> stored health.  Each step is isolated: one failing never skips the
  others, and none can fail the run.
- Celery's ``task_failure`` for ``jobs.execute``: a run whose execute task crashed (a bug, the
  database gone mid-run) is closed as LOST at once instead of waiting for the reconciler.
- :func:`ensure_periodic_tasks` registers the watchdog and the daily prune with
  django-celery-beat (idempotent; run after every ``migrate`` and when beat starts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from jobs import queries

log = logging.getLogger(__name__)

WATCHDOG_NAME = "smartcron:watchdog"
PRUNE_NAME = "smartcron:prune-history"

_JOB_FIELDS = ("id", "name", "status", "health", "consecutive_failures", "circuit_breaker_threshold",
               "circuit_opened_at", "timeout_seconds", "memory_limit_mb", "baseline_runs", "baseline_duration_p50",
               "baseline_duration_p95", "baseline_duration_mad", "baseline_memory_p50", "baseline_memory_p95",
               "baseline_memory_mad", "baseline_updated_at", "slot_id")


def _step(name: str, run_id: int, fn: Callable[[], Any]) -> Any:
    # No savepoint per step: on SQLite and MySQL (the supported backends) a failed statement
    # is rolled back alone and the transaction goes on; savepoints would double the number
    # of round trips per run.
    try:
        return fn()
    except Exception:  # noqa: BLE001 - bookkeeping must never lose a run or skip the next step
        log.exception("observability step %s failed for run %s", name, run_id)
        return None


def on_run_finished(run) -> None:
    """Everything observability does after a run reached a final state.

    One transaction, so the figures of a run land together (one commit instead of one per
    statement); notifications are published after it commits.  Inside ``close_run``'s
    transaction no savepoint of its own: each step already swallows its errors, and
    anything escaping rolls back close_run's savepoint around the bookkeeping (never the
    run's final state).
    """
    with transaction.atomic(savepoint=False):
        _on_run_finished(run)


def _on_run_finished(run) -> None:
    from jobs import anomaly, baselines, breaker, health, stats
    from jobs.conf import conf
    from jobs.models import FAILURE_STATES, RunState

    # record_finished updated the job with queryset updates: read it fresh (one query).
    job, job_stats = _load_job(run.job_id)
    reference = (job_stats[1], job_stats[2]) if job_stats else (None, None)
    counted = job_stats[0] if job_stats else None
    # Read by record_finished a moment ago in the same transaction (see services.record_finished).
    open_alerts: dict[str, str] | None = getattr(run, "open_alerts", None)
    if open_alerts is None:
        open_alerts = dict(queries.open_alerts.rows(job.pk))
    succeeded = run.state == RunState.SUCCEEDED
    # The latest successes, read once: the trend window, and the baseline window too when
    # this success may trigger a recompute.
    limit = max(conf.TREND_WINDOW, conf.BASELINE_WINDOW) if baselines.due(counted) else conf.TREND_WINDOW
    latest = _step("recent", run.pk, lambda: stats.latest_successes(job.pk, limit)) if succeeded else None
    recent = stats.summarise_recent(latest[:conf.TREND_WINDOW]) if latest is not None else None
    _step("stats", run.pk, lambda: stats.record(run, recent=recent))
    if succeeded:
        baseline = _step("baseline", run.pk, lambda: baselines.maybe_recompute(
            job, counted=counted, latest=latest, latest_limit=limit))
        if baseline is not None:
            reference = baseline.reference
    _step("anomaly", run.pk, lambda: anomaly.evaluate(run, job, open_alerts, recent, reference))
    if run.state in FAILURE_STATES:
        _step("breaker", run.pk, lambda: breaker.after_failure(run, job, open_alerts))
    _step("health", run.pk, lambda: health.refresh_job_health(job, open_alerts))


_STATS_FIELDS = ("runs_since_baseline", "reference_duration_p50", "reference_memory_p50")


def _job_with_stats(pk):
    from jobs.models import Job

    return (Job.objects.select_related("stats").only(*_JOB_FIELDS, *(f"stats__{f}" for f in _STATS_FIELDS))
            .filter(pk=pk))


# Compiled once per process: building the select_related queryset took longer than the
# query itself.
_job_query = queries.Prepared(_job_with_stats)


def _load_job(job_id: int):
    """The job (the fields the hook uses) and its JobStats' (runs_since_baseline, reference
    duration p50, reference memory p50), or None without a JobStats row: one query."""
    from django.core.exceptions import ObjectDoesNotExist

    from jobs.models import Job

    job = _job_query.first(job_id)
    if job is None:
        raise Job.DoesNotExist(f"job {job_id}")
    try:
        stats = job.stats
    except ObjectDoesNotExist:
        return job, None
    return job, tuple(getattr(stats, f) for f in _STATS_FIELDS)


def on_execute_failure(sender=None, task_id=None, exception=None, args=None, kwargs=None, **_: Any) -> None:
    """Celery ``task_failure``: close the run of a crashed ``jobs.execute`` as LOST."""
    if getattr(sender, "name", None) != "jobs.execute":
        return
    run_id = (args or [None])[0] if args else (kwargs or {}).get("run_id")
    if run_id is None:
        return
    from jobs import services
    from jobs.models import LIVE_STATES, JobRun, RunState

    run = JobRun.objects.select_related("job").filter(pk=run_id, state__in=LIVE_STATES).first()
    if run is None:
        return
    why = f"execute task crashed on its worker: {exception.__class__.__name__}: {exception}"[:4000]
    if services.close_run(run, LIVE_STATES, RunState.LOST, error=why):
        log.error("run %s of %s closed as LOST: %s", run.pk, run.job.name, why)


def ensure_periodic_tasks() -> dict[str, str]:
    """Create or update the watchdog and daily prune PeriodicTasks (idempotent)."""
    from jobs.beat_sync import ensure_system_task
    from jobs.conf import conf

    ensure_system_task(WATCHDOG_NAME, "jobs.watchdog", every_seconds=conf.WATCHDOG_SECONDS,
                       description="Smart Cron watchdog: overdue jobs, alert reminders, health")
    minute, hour = (conf.RETENTION_AT.split() + ["3"])[:2]
    ensure_system_task(PRUNE_NAME, "jobs.prune_history", cron=f"{minute} {hour} * * *",
                       enabled=bool(conf.RETENTION_DAYS),
                       description="Smart Cron retention: archive and delete old runs (SMARTCRON_RETENTION_DAYS)")
    return {"watchdog": f"every {conf.WATCHDOG_SECONDS} s", "prune": f"{minute} {hour} * * * UTC"}


def _after_migrate(sender, app_config=None, using: str = "default", **kwargs: Any) -> None:
    if app_config is None or app_config.label != "jobs":
        return
    try:
        ensure_periodic_tasks()
    except Exception:  # noqa: BLE001 - never fail a migration over a schedule row
        log.exception("could not register the observability periodic tasks")


def _on_beat_init(sender=None, **kwargs: Any) -> None:
    _after_migrate(None, app_config=type("C", (), {"label": "jobs"})())


_installed = False


def install() -> None:
    """Connect everything (called from JobsConfig.ready; idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    from celery.signals import beat_init, task_failure
    from django.db.models.signals import post_migrate

    from jobs import health, hooks, notify, retention  # noqa: F401 - registers their Celery tasks

    hooks.on_run_finished(on_run_finished)
    task_failure.connect(on_execute_failure, weak=False, dispatch_uid="smartcron_execute_failure")
    post_migrate.connect(_after_migrate, weak=False, dispatch_uid="smartcron_observability_tasks")
    beat_init.connect(_on_beat_init, weak=False, dispatch_uid="smartcron_observability_beat")
