"""Circuit breaker: a job that keeps failing is paused instead of failing forever.

After CONSECUTIVE_FAILURES_ALERT failures in a row a ``consecutive_failures`` alert (error)
opens; at the job's threshold (``Job.circuit_breaker_threshold``, else BREAKER_THRESHOLD;
0 = never) the job is paused with ``job.save()`` (so the beat sync removes its tick) and a
critical ``circuit_open`` alert opens.  That alert stays open until an operator resets the
breaker (``manage.py circuit_breaker --reset --job NAME`` or :func:`reset`), which
re-activates the job, zeroes its failure count and resolves both alerts.  A success of a
manual run while the circuit is open does not close it: a person decides.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from jobs import alerts
from jobs.conf import conf
from jobs.models import Alert, Job, JobRun

log = logging.getLogger(__name__)


def threshold_for(job: Job) -> int:
    """Failures in a row that open the circuit (0: the breaker is off for this job)."""
    if job.circuit_breaker_threshold is not None:
        return int(job.circuit_breaker_threshold)
    return int(conf.BREAKER_THRESHOLD)


def after_failure(run: JobRun, job: Job, open_alerts: dict[str, str] | None = None) -> bool:
    """Called after a failed run with a fresh ``job`` (its consecutive_failures counted).

    Returns True when this failure opened the circuit.
    """
    n = job.consecutive_failures
    if n >= conf.CONSECUTIVE_FAILURES_ALERT:
        alerts.raise_alert(job, Alert.Type.CONSECUTIVE_FAILURES, Alert.Severity.ERROR,
                           f"{job.name}: {n} failures in a row (last: run {run.pk} {run.state})", run,
                           open_alerts=open_alerts)
        if open_alerts is not None:
            open_alerts[Alert.Type.CONSECUTIVE_FAILURES] = Alert.Severity.ERROR
    threshold = threshold_for(job)
    if threshold and n >= threshold:
        return trip(job, run, f"{n} failures in a row (threshold {threshold})", open_alerts)
    return False


def trip(job: Job, run: JobRun | None = None, why: str = "", open_alerts: dict[str, str] | None = None) -> bool:
    """Open the circuit: pause the job (once, whoever calls first) and raise a critical alert."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job.pk, status__in=Job.RUNNABLE_STATUSES, circuit_opened_at__isnull=True).update(
        status=Job.Status.PAUSED, circuit_opened_at=now, updated_at=now)
    if not claimed:
        return False
    fresh = Job.objects.select_related("slot").get(pk=job.pk)
    # save() (not update()) so that post_save runs the beat sync and the tick disappears.
    fresh.save(update_fields=["status", "circuit_opened_at", "updated_at"])
    job.status, job.circuit_opened_at = fresh.status, fresh.circuit_opened_at
    log.error("circuit breaker opened for %s: %s", job.name, why)
    alerts.raise_alert(job, Alert.Type.CIRCUIT_OPEN, Alert.Severity.CRITICAL,
                       f"{job.name}: paused by the circuit breaker after {why}. Fix the cause, then "
                       f"`manage.py circuit_breaker --reset --job {job.name}`.", run, open_alerts=open_alerts)
    if open_alerts is not None:
        open_alerts[Alert.Type.CIRCUIT_OPEN] = Alert.Severity.CRITICAL
    return True


def reset(job: Job) -> dict[str, Any]:
    """Close the circuit: re-activate a paused job, zero its failure count, resolve the alerts."""
    fresh = Job.objects.select_related("slot").get(pk=job.pk)
    was_open = fresh.circuit_opened_at is not None
    reactivated = fresh.status == Job.Status.PAUSED
    if reactivated:
        fresh.status = Job.Status.ACTIVE
    fresh.circuit_opened_at = None
    fresh.consecutive_failures = 0
    fresh.save(update_fields=["status", "circuit_opened_at", "consecutive_failures", "updated_at"])
    resolved = alerts.resolve_alerts(fresh, [Alert.Type.CIRCUIT_OPEN, Alert.Type.CONSECUTIVE_FAILURES])
    log.warning("circuit breaker reset for %s (was open: %s)", fresh.name, was_open)
    return {"job": fresh.name, "was_open": was_open, "reactivated": reactivated, "alerts_resolved": resolved,
            "status": fresh.status}


def status(jobs: QuerySet[Job] | None = None) -> list[dict[str, Any]]:
    """Breaker state per job: job, status, state ('open'|'closed'|'off'), consecutive_failures,
    threshold, opened_at."""
    qs = (jobs if jobs is not None else Job.objects.all()).order_by("name").only(
        "name", "status", "consecutive_failures", "circuit_breaker_threshold", "circuit_opened_at")
    out = []
    for job in qs:
        threshold = threshold_for(job)
        state = "open" if job.circuit_opened_at else ("closed" if threshold else "off")
        out.append({"job": job.name, "status": job.status, "state": state,
                    "consecutive_failures": job.consecutive_failures, "threshold": threshold,
                    "opened_at": job.circuit_opened_at})
    return out
