"""The database's jobs as the load planner sees them.

One conversion for every consumer: ``optimize_schedule``, the peer schedule export,
``fetch_peer_schedule``, the admin collision check and the dashboard timeline.
"""

from __future__ import annotations

from typing import Any

from jobs.schedule import ScheduleError
from slots import planner


def plan_job(job) -> planner.PlanJob:
    """One Job as a PlanJob: expected (p95) duration and peak, a window within its minute
    (capped at its interval).  Raises ScheduleError/ValueError/TypeError for an unusable schedule."""
    common = {"name": job.name, "tz": job.timezone or "UTC", "wait_seconds": int(job.wait_seconds or 0),
              "duration_s": float(job.expected_seconds), "memory_mb": float(job.expected_peak_mb),
              "slot": job.slot.name, "pinned": bool(job.pinned)}
    if job.schedule_type == job.ScheduleType.INTERVAL:
        interval = int(job.interval_seconds)
        return planner.PlanJob(interval_s=interval, window_s=min(planner.DEFAULT_WINDOW_S, interval), **common)
    cron = job.effective_cron()
    if cron is None:
        raise ValueError(f"job {job.name!r} has no schedule to plan")
    return planner.PlanJob(cron=cron, window_s=planner.DEFAULT_WINDOW_S, **common)


def database_workload(stderr=None) -> tuple[list[planner.PlanJob], list[Any]]:
    """The schedulable jobs of the database, with their model instances (same order).

    A job whose schedule cannot be planned is left out, with a line on ``stderr`` if given.
    """
    from jobs.models import Job  # lazily: the planner itself works without a database

    jobs, rows = [], []
    for job in Job.objects.schedulable().select_related("slot").order_by("name"):
        try:
            jobs.append(plan_job(job))
            rows.append(job)
        except (ScheduleError, TypeError, ValueError) as exc:
            if stderr is not None:
                stderr.write(f"skipping job {job.name!r}: its schedule cannot be planned ({exc})")
    return jobs, rows
