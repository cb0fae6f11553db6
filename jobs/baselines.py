"""Each job's normal: median, p95 and MAD of duration and peak memory of its recent successes.

A baseline is recomputed automatically after every ``BASELINE_EVERY_RUNS`` new successful
runs (the counter lives in JobStats and is claimed with a conditional UPDATE, so two workers
finishing runs of the same job at once never both recompute), from the latest
``BASELINE_WINDOW`` successful runs, and only once at least ``BASELINE_MIN_RUNS`` exist.
Because it always comes from the recent window, a job that durably changes behaviour gets a
new normal after about half a window; single outliers barely move a median.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from django.db.models import QuerySet
from django.utils import timezone

from jobs.conf import conf
from jobs.models import Job, JobRun, JobStats, RunState


@dataclasses.dataclass(frozen=True)
class Baseline:
    runs: int
    duration_p50: float | None
    duration_p95: float | None
    duration_mad: float | None
    memory_p50: float | None
    memory_p95: float | None
    memory_mad: float | None
    # Trend reference (not a Job field): medians of the window minus its newest runs.
    reference_duration_p50: float | None = None
    reference_memory_p50: float | None = None

    def as_fields(self) -> dict[str, float | int | None]:
        return {f"baseline_{k}": v for k, v in dataclasses.asdict(self).items() if not k.startswith("reference_")}

    @property
    def reference(self) -> tuple[float | None, float | None]:
        return self.reference_duration_p50, self.reference_memory_p50


def robust_summary(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(median, p95, MAD) of ``values``; MAD is the raw median absolute deviation."""
    if not values:
        return None, None, None
    import numpy as np  # imported here: keeps numpy out of every process's start-up

    arr = np.asarray(values, dtype=float)
    median = float(np.median(arr))
    return median, float(np.percentile(arr, 95)), float(np.median(np.abs(arr - median)))


def compute(samples: Sequence[tuple[float | None, float | None]]) -> Baseline | None:
    """A baseline from (duration, peak memory) pairs, or None with too few samples."""
    durations = [float(d) for d, _ in samples if d is not None]
    if len(durations) < conf.BASELINE_MIN_RUNS:
        return None
    memories = [float(m) for _, m in samples if m is not None]
    d50, d95, dmad = robust_summary(durations)
    m50, m95, mmad = robust_summary(memories)
    # Samples are newest first: the reference leaves out the newest TREND_WINDOW runs when
    # enough older ones remain, else it is the baseline median itself.
    older = samples[conf.TREND_WINDOW:]
    ref_d, ref_m = d50, m50
    if len(older) >= max(3, conf.BASELINE_MIN_RUNS // 2):
        ref_d = robust_summary([float(d) for d, _ in older if d is not None])[0] or d50
        ref_m = robust_summary([float(m) for _, m in older if m is not None])[0] or m50
    return Baseline(len(durations), _r(d50), _r(d95), _r(dmad), _r(m50), _r(m95), _r(mmad), _r(ref_d), _r(ref_m))


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def due(counted: int | None) -> bool:
    """Whether the success being recorded may complete a batch of BASELINE_EVERY_RUNS.

    ``counted``: the job's counter as read before this run was counted (None: unknown).
    """
    return counted is None or counted + 1 >= conf.BASELINE_EVERY_RUNS


def samples(job_id: int, latest: Sequence[tuple[float | None, float | None]] | None = None,
            latest_limit: int = 0) -> list[tuple[float | None, float | None]]:
    """(duration, peak memory) of the job's latest BASELINE_WINDOW successful runs that have a
    duration, newest first.

    ``latest``: the job's latest successes as :func:`jobs.stats.latest_successes` returned
    them when asked for ``latest_limit`` rows.  When they hold the whole window (or all the
    job's successes), no query is needed.
    """
    size = conf.BASELINE_WINDOW
    if latest is not None:
        timed = [row for row in latest if row[0] is not None]
        if len(timed) >= size or len(latest) < latest_limit:
            return timed[:size]
    from jobs.stats import latest_successes

    return latest_successes(job_id, size, timed_only=True)


def _store_on_job(job: Job, baseline: Baseline, now: dt.datetime | None) -> None:
    from jobs.queries import update_sql

    fields = {**baseline.as_fields(), "baseline_updated_at": now or timezone.now()}
    # A plain UPDATE: no post_save, so the beat sync is not involved.
    update_sql(Job, {"id": job.pk}, sets=fields)
    for key, value in fields.items():
        setattr(job, key, value)


def _reference_fields(baseline: Baseline) -> dict[str, float | None]:
    return {"reference_duration_p50": baseline.reference_duration_p50,
            "reference_memory_p50": baseline.reference_memory_p50}


def recompute(job: Job, *, now: dt.datetime | None = None) -> Baseline | None:
    """Recompute and store ``job``'s baseline now; None (and nothing stored) while learning."""
    baseline = compute(samples(job.pk))
    if baseline is None:
        return None
    _store_on_job(job, baseline, now)
    from jobs.stats import upsert

    upsert(JobStats, {"job_id": job.pk}, sets=_reference_fields(baseline))
    return baseline


def maybe_recompute(job: Job, *, now: dt.datetime | None = None, counted: int | None = None,
                    latest: Sequence[tuple[float | None, float | None]] | None = None,
                    latest_limit: int = 0) -> Baseline | None:
    """Recompute when enough new successful runs were counted since the last time.

    ``counted``: the counter as the caller read it before this run was counted; saves the
    query in the common case where it is clearly below the threshold.  ``latest`` and
    ``latest_limit``: see :func:`samples` (saves reading the runs again).

    The claim of the counter and the trend reference are one conditional UPDATE: a worker
    that loses the claim to another one stores nothing.
    """
    if not due(counted):
        return None
    baseline = compute(samples(job.pk, latest, latest_limit))
    fields: dict[str, float | int | None] = {"runs_since_baseline": 0}
    if baseline is not None:
        fields.update(_reference_fields(baseline))
    from jobs.queries import update_sql

    claimed = update_sql(JobStats, {"job_id": job.pk}, sets=fields,
                         at_least={"runs_since_baseline": conf.BASELINE_EVERY_RUNS})
    if not claimed or baseline is None:
        return None
    _store_on_job(job, baseline, now)
    return baseline


def recalculate(jobs: QuerySet[Job] | None = None) -> list[dict]:
    """Recompute the baselines of ``jobs`` (default: all) on demand; one result dict per job."""
    out = []
    qs = (jobs if jobs is not None else Job.objects.all()).order_by("name")
    for job in qs:
        before = job.baseline_duration_p50
        baseline = recompute(job)
        JobStats.objects.filter(job_id=job.pk).update(runs_since_baseline=0)
        out.append({
            "job": job.name,
            "status": "updated" if baseline else "learning",
            "runs": baseline.runs if baseline else _successes(job),
            "previous_duration_p50": before,
            **(dataclasses.asdict(baseline) if baseline else {}),
        })
    return out


def _successes(job: Job) -> int:
    return JobRun.objects.filter(job_id=job.pk, state=RunState.SUCCEEDED, duration_s__isnull=False).count()


def has_baseline(job: Job) -> bool:
    return bool(job.baseline_runs and job.baseline_runs >= conf.BASELINE_MIN_RUNS
                and job.baseline_duration_p50 is not None)
