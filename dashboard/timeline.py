"""The 24 h picture of the schedule: when each job starts, how long it runs, load per slot.

Same model as the load planner (:mod:`slots.planner`): one UTC day at 1 s resolution,
cron minutes evaluated in the job's time zone (its offset at noon), day-of-month,
month and weekday fields ignored (a job that runs on some days only is drawn as on its
busy day), durations at the job's expected (p95) duration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging

import numpy as np
from croniter import croniter
from django.core.cache import cache
from django.db.models import Count, Max

from api import conf
from jobs import schedule as sched
from jobs.models import Job
from slots import planner, workload

log = logging.getLogger(__name__)

DAY_S = 86400
MINUTES = 1440
BUCKET_S = 300  # heatmap cell: 5 minutes
BUCKETS = DAY_S // BUCKET_S


@dataclasses.dataclass
class JobRow:
    job: Job
    starts: int  # runs per day
    segments: list[tuple[int, int]]  # busy minutes [start, end) of the day
    duration_s: float
    some_days_only: bool
    first_start_s: int | None


@dataclasses.dataclass
class SlotLoad:
    name: str
    max_concurrent: int
    memory_budget_mb: int
    runs: list[int]  # per 5-minute bucket: most runs at once
    memory_mb: list[float]  # per bucket: most memory at once
    peak_runs: int
    peak_at_s: int
    peak_memory_mb: float
    minutes_over_limit: int
    over_windows: list[tuple[int, int]]  # (start_s, end_s) where the runs limit is exceeded

    @property
    def peak_at(self) -> str:
        return clock(self.peak_at_s)

    @property
    def over_windows_hhmm(self) -> list[tuple[str, str]]:
        return [(clock(a), clock(b)) for a, b in self.over_windows]


def clock(seconds: int) -> str:
    seconds = int(seconds) % DAY_S
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def day_start(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).timestamp())


def job_day_starts(job: Job, day: dt.date) -> tuple[np.ndarray, bool]:
    """Seconds of the UTC ``day`` at which ``job`` starts, and whether its cron limits the days."""
    if job.schedule_type == Job.ScheduleType.MANUAL:
        return np.zeros(0, dtype=np.int64), False
    if job.schedule_type == Job.ScheduleType.INTERVAL:
        interval = int(job.interval_seconds or 60)
        start = day_start(day)
        phase = int(job.wait_seconds) % interval
        first = -(-(start - phase) // interval) * interval + phase  # first grid point >= start
        return np.arange(first, start + DAY_S, interval, dtype=np.int64) - start, False
    cron = job.effective_cron()
    if cron is None:
        return np.zeros(0, dtype=np.int64), False
    fields = sched.normalize_cron(cron).split(" ")
    minutes, hours = croniter(" ".join(fields)).expanded[:2]
    mins = range(60) if "*" in minutes else [int(m) for m in minutes]
    hrs = range(24) if "*" in hours else [int(h) for h in hours]
    local = np.array([h * 3600 + m * 60 for h in hrs for m in mins], dtype=np.int64)
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC).astimezone(sched.validate_timezone(job.timezone))
    shift = int(noon.utcoffset().total_seconds())
    starts = np.unique((local - shift + int(job.wait_seconds)) % DAY_S)
    return starts, any(f != "*" for f in fields[2:])


def busy_minutes(starts: np.ndarray, duration_s: float) -> list[tuple[int, int]]:
    """Minutes of the day touched by runs ``[start, start + duration)``, merged into segments."""
    if not starts.size:
        return []
    dur = max(1, int(np.ceil(duration_s)))
    if dur >= DAY_S:
        return [(0, MINUTES)]
    first = starts // 60
    last = (starts + dur - 1) // 60  # may pass midnight: wraps
    diff = np.zeros(2 * MINUTES + 1, dtype=np.int64)
    np.add.at(diff, first, 1)
    np.add.at(diff, last + 1, -1)
    cover = np.cumsum(diff[:2 * MINUTES])
    busy = (cover[:MINUTES] + cover[MINUTES:]) > 0
    segments: list[tuple[int, int]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], busy.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        segments.append((int(a), int(b)))
    return segments


def job_rows(jobs: list[Job], day: dt.date) -> list[JobRow]:
    rows = []
    for job in jobs:
        try:
            starts, some_days = job_day_starts(job, day)
        except (sched.ScheduleError, ValueError) as exc:  # a bad schedule must not break the page
            log.warning("timeline: job %s has an unusable schedule: %s", job.name, exc)
            starts, some_days = np.zeros(0, dtype=np.int64), False
        duration = job.expected_seconds
        rows.append(JobRow(job, int(starts.size), busy_minutes(starts, duration), duration, some_days,
                           int(starts.min()) if starts.size else None))
    return rows


def plan_job(job: Job) -> planner.PlanJob | None:
    """The planner's view of one job (None for manual or unusable schedules)."""
    try:
        return workload.plan_job(job)
    except (sched.ScheduleError, TypeError, ValueError):
        return None


def _windows(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _fingerprint(qs) -> str:
    """Changes whenever a schedulable job is added, removed or edited (baselines included)."""
    agg = qs.aggregate(n=Count("id"), updated=Max("updated_at"), baseline=Max("baseline_updated_at"))
    return hashlib.sha256(repr(sorted(agg.items())).encode()).hexdigest()[:16]


def slot_loads(day: dt.date, slots) -> list[SlotLoad]:
    """Concurrent runs and memory per slot over the day, from every schedulable job (cached)."""
    qs = Job.objects.schedulable()
    limits = sorted((s.name, s.max_concurrent, s.memory_budget_mb) for s in slots)
    key = (f"smartcron:dashboard:load:{day.isoformat()}:{_fingerprint(qs)}:"
           f"{hashlib.sha256(repr(limits).encode()).hexdigest()[:12]}")
    loads = cache.get(key)
    if loads is None:
        loads = _compute_loads(day, qs, slots)
        cache.set(key, loads, timeout=int(conf.get("DASHBOARD_TIMELINE_CACHE_SECONDS")))
    return loads


def _compute_loads(day: dt.date, qs, slots) -> list[SlotLoad]:
    plan_jobs = [p for p in (plan_job(j) for j in qs.select_related("slot")) if p is not None]
    profile = planner.simulate(plan_jobs, day=day) if plan_jobs else None
    out = []
    for slot in slots:
        per_second = profile.slots.get(slot.name) if profile is not None else None
        if per_second is None:
            jobs_arr, mem_arr = np.zeros(DAY_S, dtype=np.int64), np.zeros(DAY_S)
        else:
            jobs_arr, mem_arr = per_second
        runs = jobs_arr.reshape(BUCKETS, BUCKET_S).max(axis=1)
        mem = mem_arr.reshape(BUCKETS, BUCKET_S).max(axis=1)
        exceed = jobs_arr > slot.max_concurrent
        out.append(SlotLoad(
            name=slot.name, max_concurrent=slot.max_concurrent, memory_budget_mb=slot.memory_budget_mb,
            runs=[int(v) for v in runs], memory_mb=[round(float(v), 1) for v in mem],
            peak_runs=int(jobs_arr.max()), peak_at_s=int(np.argmax(jobs_arr)),
            peak_memory_mb=round(float(mem_arr.max()), 1),
            minutes_over_limit=int(np.ceil(exceed.sum() / 60)), over_windows=_windows(exceed)[:20]))
    return out
