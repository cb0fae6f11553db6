"""Operations on jobs and runs that several entry points share (tasks, commands, admin, API)."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from jobs import alerts, hooks, queries
from jobs.models import ACTIVE_STATES, FAILURE_STATES, Alert, Job, JobRun, RunState
from jobs.queries import update_row

log = logging.getLogger(__name__)


def create_run(job: Job, scheduled_for: dt.datetime, *, trigger: str = JobRun.Trigger.SCHEDULE,
               attempt: int = 1, retry_of: JobRun | None = None,
               idempotency_key: str | None = None) -> tuple[JobRun, bool]:
    """Create the run for (job, planned second) once; return (run, created)."""
    try:
        with transaction.atomic():
            run = JobRun.objects.create(
                job=job, scheduled_for=scheduled_for, trigger=trigger, attempt=attempt, retry_of=retry_of,
                slot_name=job.slot.name if job.slot_id else "", idempotency_key=idempotency_key,
            )
            return run, True
    except IntegrityError:
        if idempotency_key:
            existing = JobRun.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing, False
        return JobRun.objects.get(job=job, scheduled_for=scheduled_for), False


def dispatch(run: JobRun) -> None:
    """Send the start task so that it fires a little before the planned second."""
    from jobs.tasks import start

    lead = dt.timedelta(milliseconds=settings.DISPATCH_LEAD_MS)
    eta = run.scheduled_for - lead
    if eta > timezone.now():
        start.apply_async((run.pk,), eta=eta, queue=settings.DISPATCH_QUEUE)
    else:
        start.apply_async((run.pk,), queue=settings.DISPATCH_QUEUE)


def run_now(job: Job, *, idempotency_key: str | None = None, delay_s: float = 0.0) -> tuple[JobRun, bool]:
    """Start ``job`` as soon as its slot admits it (manual trigger)."""
    planned = timezone.now() + dt.timedelta(seconds=delay_s)
    run, created = create_run(job, planned, trigger=JobRun.Trigger.MANUAL, idempotency_key=idempotency_key)
    if created:
        transaction.on_commit(lambda: dispatch(run))
    return run, created


def kill_run(run: JobRun) -> bool:
    """Stop a run: cancel it if it has not started, else ask its worker to kill it."""
    from slots.admission import request_kill

    if run.transition((RunState.PENDING, RunState.QUEUED), RunState.CANCELLED,
                      finished_at=timezone.now(), error="cancelled before start"):
        return True
    if run.state in (RunState.ADMITTED, RunState.RUNNING):
        request_kill(run.pk)
        return True
    return False


def kill_job(job: Job) -> int:
    n = 0
    for run in JobRun.objects.filter(job=job, state__in=ACTIVE_STATES):
        n += kill_run(run)
    return n


RECOVERED_TYPES = (Alert.Type.FAILURE, Alert.Type.TIMEOUT, Alert.Type.CONSECUTIVE_FAILURES, Alert.Type.LOST,
                   Alert.Type.MISSED)


def record_finished(run: JobRun) -> None:
    """Everything that follows a run reaching a final state (the caller won the transition).

    The job's open alerts (type -> severity) are read once here and handed to the
    run-finished hooks as ``run.open_alerts``, kept current with what this function
    resolves and raises (most jobs have none: nothing to resolve, no UPDATE).
    """
    job = run.job
    now = timezone.now()
    fields = {"last_run_at": run.finished_at or now, "last_state": run.state}
    open_alerts: dict[str, str] = dict(queries.open_alerts.rows(job.pk))
    run.open_alerts = open_alerts

    def alert(type_: str, severity: str, message: str) -> None:
        raised = alerts.raise_alert(job, type_, severity, message, run)
        open_alerts[type_] = raised.severity if raised is not None else severity

    if run.state == RunState.SUCCEEDED:
        update_row(Job, job.pk, {"consecutive_failures": 0, "last_success_at": run.finished_at or now, **fields})
        recovered = [t for t in RECOVERED_TYPES if t in open_alerts]
        if recovered:
            alerts.resolve_alerts(job, recovered)
            for t in recovered:
                open_alerts.pop(t, None)
    elif run.state in FAILURE_STATES:
        Job.objects.filter(pk=job.pk).update(consecutive_failures=F("consecutive_failures") + 1, **fields)
        type_ = {
            RunState.TIMED_OUT: Alert.Type.TIMEOUT,
            RunState.KILLED_MEMORY: Alert.Type.HIGH_MEMORY,
            RunState.LOST: Alert.Type.LOST,
        }.get(run.state, Alert.Type.FAILURE)
        detail = run.error or (f"exit code {run.exit_code}" if run.exit_code is not None else run.state)
        alert(type_, Alert.Severity.ERROR, f"{job.name}: run {run.pk} {run.state}: {detail}")
    elif run.state == RunState.MISSED:
        update_row(Job, job.pk, fields)
        alert(Alert.Type.MISSED, Alert.Severity.WARNING,
              f"{job.name}: run planned for {run.scheduled_for:%Y-%m-%d %H:%M:%S} UTC missed: {run.error}")
    else:
        update_row(Job, job.pk, fields)
    if run.state in FAILURE_STATES and run.attempt <= job.max_retries:
        schedule_retry(run)
    hooks.run_finished(run)


def schedule_retry(run: JobRun) -> JobRun | None:
    """Retry a failed or lost run after an exponential backoff (at most max_retries times)."""
    job = run.job
    backoff = job.retry_backoff_seconds * (2 ** (run.attempt - 1))
    planned = timezone.now().replace(microsecond=0) + dt.timedelta(seconds=max(1, backoff))
    retry, created = create_run(job, planned, trigger=JobRun.Trigger.RETRY, attempt=run.attempt + 1, retry_of=run)
    if created:
        log.info("run %s of %s will be retried as run %s at %s", run.pk, job.name, retry.pk, planned)
        transaction.on_commit(lambda: dispatch(retry))
        return retry
    return None


def close_run(run: JobRun, from_states, to_state: str, **fields) -> bool:
    """Move a run to a final state (fenced) and run the after-run bookkeeping."""
    fields.setdefault("finished_at", timezone.now())
    # One transaction: the final state and everything it implies (job fields, alerts,
    # stats, baseline, health) commit together, one commit (and on SQLite one write-lock
    # acquisition) per run instead of one per statement.
    with transaction.atomic():
        if not run.transition(from_states, to_state, **fields):
            return False
        try:
            with transaction.atomic():  # a savepoint: failing bookkeeping never loses the final state
                record_finished(run)
        except Exception:  # noqa: BLE001 - the run's outcome is recorded; the rest is logged
            log.exception("after-run bookkeeping failed for run %s", run.pk)
    return True
