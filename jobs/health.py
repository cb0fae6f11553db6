"""Health summary, performance trends and the watchdog (overdue jobs, reminders).

:func:`health_summary` and :func:`performance_trends` are what the API, the dashboard and
the operator commands show.  Each is a fixed number of queries whatever the number of jobs
(an annotated Job queryset, plus grouped queries over the hourly stats and the open
alerts), never one per job.

Health rules (same in the per-run refresh and in the summary):
- critical: circuit open, or an open critical alert, or >= CONSECUTIVE_FAILURES_ALERT
  failures in a row;
- warning: a failure in a row, overdue, or an open error/warning alert;
- healthy otherwise.
Execution status, first match: failing (last run(s) failed), overdue (a run was due and
none exists past its start window + OVERDUE_GRACE_SECONDS), never_run, ok.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import shared_task
from django.db.models import Case, Count, DateTimeField, Exists, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs import alerts, stats
from jobs.anomaly import trend
from jobs.conf import SEVERITY_RANK, conf
from jobs.models import Alert, Job, JobRun

log = logging.getLogger(__name__)

CRITICAL, WARNING, HEALTHY = Job.Health.CRITICAL, Job.Health.WARNING, Job.Health.HEALTHY


def classify(*, consecutive_failures: int, circuit_open: bool, worst_alert: str | None, overdue: bool) -> str:
    """critical / warning / healthy from the facts above (see the module docstring)."""
    rank = SEVERITY_RANK.get(worst_alert or "", -1)
    if circuit_open or rank >= SEVERITY_RANK["critical"] or consecutive_failures >= conf.CONSECUTIVE_FAILURES_ALERT:
        return CRITICAL
    if consecutive_failures > 0 or overdue or rank >= SEVERITY_RANK["warning"]:
        return WARNING
    return HEALTHY


def execution_status(*, consecutive_failures: int, overdue: bool, last_run_at: dt.datetime | None) -> str:
    if consecutive_failures > 0:
        return "failing"
    if overdue:
        return "overdue"
    if last_run_at is None:
        return "never_run"
    return "ok"


def _latest_planned_if_overdue(now: dt.datetime) -> Case:
    """The job's latest planned second, looked up only for jobs past their overdue_at.

    One backwards probe of the (job, scheduled_for) index per candidate.  (An EXISTS on
    ``scheduled_for >= next_due_at`` reads every run of every job on MariaDB, which only
    uses the job part of the index for a correlated range.)
    """
    latest = JobRun.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for").values("scheduled_for")[:1]
    return Case(When(overdue_at__lt=now, then=Subquery(latest)), default=Value(None), output_field=DateTimeField())


def _is_overdue(schedulable: bool, overdue_at, next_due_at, latest_planned, now: dt.datetime) -> bool:
    return bool(schedulable and overdue_at and overdue_at < now
                and (latest_planned is None or latest_planned < next_due_at))


def _open_alerts_by_job(job_ids: list[int] | None) -> dict[int, dict[str, int]]:
    """{job id: {severity: open alerts}} in one query over the (few) open alerts."""
    qs = Alert.objects.filter(resolved_at__isnull=True, job__isnull=False)
    if job_ids is not None:
        qs = qs.filter(job_id__in=job_ids)
    out: dict[int, dict[str, int]] = {}
    for row in qs.order_by().values("job_id", "severity").annotate(n=Count("pk")):
        out.setdefault(row["job_id"], {})[row["severity"]] = row["n"]
    return out


def _schedulable_q() -> Q:
    return Q(enabled=True, status__in=Job.RUNNABLE_STATUSES) & ~Q(schedule_type=Job.ScheduleType.MANUAL)


def health_summary(jobs_qs: QuerySet[Job] | None = None, *, now: dt.datetime | None = None,
                   percentiles: bool = False) -> list[dict[str, Any]]:
    """Per-job health, one dict per job ordered by name.  Three queries in all.

    Keys: job_id, name, slot, enabled, status, health ('critical'|'warning'|'healthy'),
    execution_status ('failing'|'overdue'|'never_run'|'ok'), consecutive_failures,
    breaker_threshold (0 = off), circuit_open (bool), circuit_opened_at, last_state,
    last_run_at, last_success_at, next_due_at, overdue (bool), open_alerts (int),
    worst_alert_severity (None|'info'|'warning'|'error'|'critical'), and over the last 24 h:
    runs_24h, succeeded_24h, failures_24h, missed_24h (skipped+missed), failure_rate_24h
    (0..1 or None), duration_avg_24h, duration_p95_24h (s), memory_avg_24h,
    memory_p95_24h (MB) (None without runs; the two p95 only with ``percentiles=True``,
    which sums the histogram bins too: fine for a page of jobs, several times slower
    for thousands).
    """
    now = now or timezone.now()
    qs = jobs_qs if jobs_qs is not None else Job.objects.all()
    rows = list(qs.order_by("name")
                .annotate(slot_name_=Coalesce("slot__name", Value("")), latest_planned=_latest_planned_if_overdue(now))
                .values("pk", "name", "slot_name_", "enabled", "status", "schedule_type", "consecutive_failures",
                        "circuit_breaker_threshold", "circuit_opened_at", "last_state", "last_run_at",
                        "last_success_at", "next_due_at", "overdue_at", "latest_planned"))
    ids = None if jobs_qs is None else [r["pk"] for r in rows]
    window = stats.rolling(ids, now=now, percentiles=percentiles) if rows else {}
    open_alerts = _open_alerts_by_job(ids) if rows else {}
    default_threshold = int(conf.BREAKER_THRESHOLD)
    out = []
    for r in rows:
        schedulable = (r["enabled"] and r["status"] in Job.RUNNABLE_STATUSES
                       and r["schedule_type"] != Job.ScheduleType.MANUAL)
        overdue = _is_overdue(schedulable, r["overdue_at"], r["next_due_at"], r["latest_planned"], now)
        alerts_of = open_alerts.get(r["pk"], {})
        worst = next((s for s in ("critical", "error", "warning", "info") if alerts_of.get(s)), None)
        threshold = r["circuit_breaker_threshold"]
        threshold = default_threshold if threshold is None else threshold
        roll = window.get(r["pk"], stats.EMPTY_ROLLING)
        out.append({
            "job_id": r["pk"], "name": r["name"], "slot": r["slot_name_"], "enabled": r["enabled"],
            "status": r["status"],
            "health": classify(consecutive_failures=r["consecutive_failures"],
                               circuit_open=r["circuit_opened_at"] is not None, worst_alert=worst, overdue=overdue),
            "execution_status": execution_status(consecutive_failures=r["consecutive_failures"], overdue=overdue,
                                                 last_run_at=r["last_run_at"]),
            "consecutive_failures": r["consecutive_failures"], "breaker_threshold": threshold,
            "circuit_open": r["circuit_opened_at"] is not None, "circuit_opened_at": r["circuit_opened_at"],
            "last_state": r["last_state"], "last_run_at": r["last_run_at"], "last_success_at": r["last_success_at"],
            "next_due_at": r["next_due_at"] if schedulable else None, "overdue": overdue,
            "open_alerts": sum(alerts_of.values()),
            "worst_alert_severity": worst,
            "runs_24h": roll["runs"], "succeeded_24h": roll["succeeded"], "failures_24h": roll["failures"],
            "missed_24h": roll["missed"], "failure_rate_24h": roll["failure_rate"],
            "duration_avg_24h": _round(roll["duration_avg"]), "duration_p95_24h": _round(roll["duration_p95"]),
            "memory_avg_24h": _round(roll["memory_avg"]), "memory_p95_24h": _round(roll["memory_p95"]),
        })
    return out


def performance_trends(jobs_qs: QuerySet[Job] | None = None) -> list[dict[str, Any]]:
    """Baseline versus recent behaviour per job, ordered by name.  One query.

    Keys: job_id, name, status ('degraded'|'unstable'|'stable'|'learning': no baseline yet),
    reasons (list of str), baseline_runs, baseline_updated_at, baseline_duration_p50,
    baseline_duration_p95, baseline_duration_mad (s), reference_duration_p50 (s: median of the
    baseline window without its newest TREND_WINDOW runs, what "recent" is compared with),
    recent_runs (successes in the recent window), recent_duration_p50 (s), percent_slower
    (recent vs reference median, %, negative = faster, None without data), duration_cv (robust
    spread / median), baseline_memory_p50, baseline_memory_p95, baseline_memory_mad,
    reference_memory_p50, recent_memory_p50 (MB), memory_change_pct (%).
    """
    qs = jobs_qs if jobs_qs is not None else Job.objects.all()
    rows = qs.order_by("name").values(
        "pk", "name", "baseline_runs", "baseline_updated_at", "baseline_duration_p50", "baseline_duration_p95",
        "baseline_duration_mad", "baseline_memory_p50", "baseline_memory_p95", "baseline_memory_mad",
        "stats__recent_runs", "stats__recent_duration_p50", "stats__recent_memory_p50",
        "stats__reference_duration_p50", "stats__reference_memory_p50")
    out = []
    for r in rows:
        tr = trend(baseline_runs=r["baseline_runs"], duration_p50=r["baseline_duration_p50"],
                   duration_mad=r["baseline_duration_mad"], memory_p50=r["baseline_memory_p50"],
                   recent_runs=r["stats__recent_runs"], recent_duration_p50=r["stats__recent_duration_p50"],
                   recent_memory_p50=r["stats__recent_memory_p50"],
                   reference_duration_p50=r["stats__reference_duration_p50"],
                   reference_memory_p50=r["stats__reference_memory_p50"])
        out.append({
            "job_id": r["pk"], "name": r["name"], "status": tr["status"], "reasons": tr["reasons"],
            "baseline_runs": r["baseline_runs"], "baseline_updated_at": r["baseline_updated_at"],
            "baseline_duration_p50": r["baseline_duration_p50"], "baseline_duration_p95": r["baseline_duration_p95"],
            "baseline_duration_mad": r["baseline_duration_mad"],
            "reference_duration_p50": r["stats__reference_duration_p50"], "recent_runs": r["stats__recent_runs"] or 0,
            "recent_duration_p50": _round(r["stats__recent_duration_p50"]), "percent_slower": tr["percent_slower"],
            "duration_cv": tr["duration_cv"],
            "baseline_memory_p50": r["baseline_memory_p50"], "baseline_memory_p95": r["baseline_memory_p95"],
            "baseline_memory_mad": r["baseline_memory_mad"], "reference_memory_p50": r["stats__reference_memory_p50"],
            "recent_memory_p50": _round(r["stats__recent_memory_p50"]), "memory_change_pct": tr["memory_change_pct"],
        })
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def refresh_job_health(job: Job, open_alerts: dict[str, str]) -> str:
    """Store the job's health after a run (no write when unchanged)."""
    worst = max(open_alerts.values(), key=lambda s: SEVERITY_RANK.get(s, 0), default=None)
    health = classify(consecutive_failures=job.consecutive_failures, circuit_open=job.circuit_opened_at is not None,
                      worst_alert=worst, overdue=False)
    if health != job.health:
        Job.objects.filter(pk=job.pk).update(health=health)
        job.health = health
    return health


# --- watchdog ------------------------------------------------------------------------------

def update_due_times(now: dt.datetime | None = None) -> int:
    """Recompute next_due_at / overdue_at of every job (None for jobs that are not ticked)."""
    now = now or timezone.now()
    grace = dt.timedelta(seconds=conf.OVERDUE_GRACE_SECONDS)
    latest = JobRun.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for").values("scheduled_for")[:1]
    changed = []
    for job in Job.objects.filter(_schedulable_q()).annotate(latest_planned=Subquery(latest)):
        start = max(t for t in (job.latest_planned, job.schedule_since, job.created_at) if t is not None)
        try:
            upcoming = job.next_runs(1, after=start + dt.timedelta(seconds=1))
        except Exception:  # noqa: BLE001 - a broken schedule must not stop the watchdog
            log.exception("cannot compute the next run of %s", job.name)
            continue
        due = upcoming[0] if upcoming else None
        overdue_at = due + dt.timedelta(seconds=job.start_window_seconds) + grace if due else None
        if (due, overdue_at) != (job.next_due_at, job.overdue_at):
            job.next_due_at, job.overdue_at = due, overdue_at
            changed.append(job)
    if changed:
        Job.objects.bulk_update(changed, ["next_due_at", "overdue_at"], batch_size=500)
    Job.objects.exclude(_schedulable_q()).filter(Q(next_due_at__isnull=False) | Q(overdue_at__isnull=False)).update(
        next_due_at=None, overdue_at=None)
    return len(changed)


def check_overdue(now: dt.datetime | None = None) -> list[str]:
    """Raise a ``missed`` alert for every job that silently stopped running."""
    now = now or timezone.now()
    open_missed = Alert.objects.filter(job=OuterRef("pk"), type=Alert.Type.MISSED, resolved_at__isnull=True)
    candidates = (Job.objects.filter(_schedulable_q(), overdue_at__lt=now)
                  .annotate(latest_planned=_latest_planned_if_overdue(now), has_alert=Exists(open_missed)))
    overdue = [j for j in candidates if _is_overdue(True, j.overdue_at, j.next_due_at, j.latest_planned, now)]
    names = []
    for job in overdue:
        names.append(job.name)
        if job.has_alert:
            continue  # already told; reminders are the renotify schedule's business
        last = job.latest_planned
        since = f"its last run was planned for {last:%Y-%m-%d %H:%M:%S} UTC" if last else "it has never run"
        alerts.raise_alert(job, Alert.Type.MISSED, Alert.Severity.WARNING,
                           f"{job.name}: not running: a run was due at {job.next_due_at:%Y-%m-%d %H:%M:%S} UTC "
                           f"and none exists ({since}). Is beat running?")
    return names


def refresh_all_health(now: dt.datetime | None = None) -> int:
    """Store every job's health from the summary (overdue is only known here)."""
    by_health: dict[str, list[int]] = {}
    for row in health_summary(now=now):
        by_health.setdefault(row["health"], []).append(row["job_id"])
    n = 0
    for health, ids in by_health.items():
        for i in range(0, len(ids), 500):
            n += Job.objects.filter(pk__in=ids[i:i + 500]).exclude(health=health).update(health=health)
    return n


def watchdog(now: dt.datetime | None = None) -> dict[str, Any]:
    """The periodic pass: due times, overdue alerts, reminders, stored health."""
    now = now or timezone.now()
    return {
        "due_updated": update_due_times(now),
        "overdue": check_overdue(now),
        "reminders": alerts.renotify_due(now),
        "health_changed": refresh_all_health(now),
        # Keeps the hourly table at the size of the window: the window query reads all of
        # it on MySQL, so this is what keeps health_summary fast.
        "stats_hours_pruned": stats.prune_hours(conf.STATS_HOURS_KEPT, now),
    }


@shared_task(name="jobs.watchdog", ignore_result=True)
def watchdog_task() -> dict[str, Any]:
    return watchdog()
