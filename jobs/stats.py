"""Run statistics kept current on every finished run, without scanning the run history.

Two tables, each written with one statement per run (:func:`upsert`: ``INSERT ... ON
DUPLICATE KEY UPDATE col = col + x`` on MySQL/MariaDB, ``ON CONFLICT ... DO UPDATE`` on
SQLite), so concurrent workers never lose a count, nothing is read first, and a missing
row costs no extra round trips:

- :class:`~jobs.models.JobStats`: one row per job, all-time counters per final state, sums,
  and a log-scale histogram of durations and peaks.  Prometheus counters/histograms read it;
  pruning old runs does not change it.
- :class:`~jobs.models.JobStatsHour`: one row per job and UTC hour.  The rolling 24 h figures
  (runs, failures, average and p95 duration and memory) are the sum of a job's last 24 rows:
  at most 24 small rows per job, whatever the run frequency or the size of the history.

The p95 comes from the histogram bins (edges grow by sqrt(2)) by linear interpolation inside
the bin holding the 95th percentile, clamped to the observed maximum: within a few percent
for typical jobs, +-19% in the worst case, which is plenty to spot a job that doubled.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Max, QuerySet, Sum
from django.utils import timezone

from jobs.models import (
    COUNTED_STATES,
    DURATION_BIN_FIELDS,
    DURATION_EDGES,
    FAILURE_STATES,
    MEMORY_BIN_FIELDS,
    MEMORY_EDGES,
    Job,
    JobRun,
    JobStats,
    JobStatsHour,
    RunState,
)
from jobs.queries import assignments, prep, update_sql

UTC = dt.UTC


def bin_index(value: float, edges: Sequence[float]) -> int:
    """Histogram bin of ``value``: i such that edges[i-1] <= value < edges[i]."""
    return bisect.bisect_right(edges, value)


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def percentile_from_bins(counts: Sequence[int], edges: Sequence[float], q: float,
                         observed_max: float | None = None) -> float | None:
    """The q-quantile (0..1) of the values counted in ``counts`` (None when empty)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        if cum + c >= rank:
            lower = edges[i - 1] if i > 0 else 0.0
            if i < len(edges):
                upper = edges[i]
            else:  # open-ended top bin: the observed maximum is the best upper bound we have
                upper = max(observed_max or 0.0, lower * 2 ** 0.5)
            value = lower + (upper - lower) * ((rank - cum) / c)
            if observed_max:
                value = min(value, observed_max)
            return value
        cum += c
    return observed_max


def latest_successes(job_id: int, limit: int, *, timed_only: bool = False) -> list[tuple[float | None, float | None]]:
    """(duration, peak memory) of the job's latest ``limit`` successful runs, newest first
    (``timed_only``: only runs with a duration).

    One backwards range read of the unique (job, scheduled_for) index, skipping the few
    runs that did not succeed; serves both the trend window and the baseline.  (An index
    on (job, state, scheduled_for) would save reading those few, at the price of one more
    index to maintain on every state change of every run.)
    """
    with connection.cursor() as cursor:
        cursor.execute(_latest_successes_sql(connection.vendor, timed_only),
                       [job_id, str(RunState.SUCCEEDED), int(limit)])
        return [(d, m) for d, m in cursor.fetchall()]


@functools.lru_cache(maxsize=8)
def _latest_successes_sql(vendor: str, timed_only: bool) -> str:
    """SELECT duration, peak memory of a job's latest successes (plain SQL: this runs for every
    successful run, and compiling the queryset costs more than running it)."""
    qn = connection.ops.quote_name
    timed = f" AND {qn('duration_s')} IS NOT NULL" if timed_only else ""
    return (f"SELECT {qn('duration_s')}, {qn('peak_memory_mb')} FROM {qn(JobRun._meta.db_table)} "  # noqa: S608
            f"WHERE {qn('job_id')} = %s AND {qn('state')} = %s{timed} ORDER BY {qn('scheduled_for')} DESC LIMIT %s")


def summarise_recent(rows: Sequence[tuple[float | None, float | None]]) -> tuple[int, float | None, float | None]:
    """(count, median duration, median peak memory) of (duration, peak memory) pairs."""
    import numpy as np

    durations = [d for d, _ in rows if d is not None]
    memories = [m for _, m in rows if m is not None]
    return (len(rows),
            float(np.median(durations)) if durations else None,
            float(np.median(memories)) if memories else None)


def recent_window(job_id: int, size: int) -> tuple[int, float | None, float | None]:
    """(count, median duration, median peak memory) of the job's latest successful runs."""
    return summarise_recent(latest_successes(job_id, size))


def _literal(value: Any) -> str | None:
    """SQL text of a constant model default (None: pass it as a parameter)."""
    if value is None:
        return "NULL"
    if type(value) in (int, float):
        return repr(value)
    return None


@functools.lru_cache(maxsize=512)  # one shape per state and histogram bins hit: few per job
def _upsert_statement(model, vendor: str, keys: tuple[str, ...], incs: tuple[str, ...], maxes: tuple[str, ...],
                      sets: tuple[str, ...]) -> tuple[str, list[tuple[str, str, Any]]]:
    """The upsert SQL and its parameter plan: (attname, kind, field or default)."""
    qn = connection.ops.quote_name
    # Every concrete column but an auto-increment id: the model's defaults are Python-side,
    # so the INSERT names them all (NOT NULL columns have no database default).  Constant
    # numeric defaults are written into the SQL: ~90 parameters fewer to escape per run.
    fields = [f for f in model._meta.concrete_fields if not (f.primary_key and f.attname not in keys)]
    values: list[str] = []
    plan: list[tuple[str, str, Any]] = []
    for f in fields:
        name = f.attname
        kind = ("key" if name in keys else "set" if name in sets else "inc" if name in incs
                else "max" if name in maxes else "default")
        if kind in ("inc", "max"):
            plan.append((name, kind, f.get_default()))
        elif kind == "default" and not (f.has_default() and callable(f.default)):
            literal = _literal(f.get_default())
            if literal is not None:
                values.append(literal)
                continue
            plan.append((name, kind, f))
        else:
            plan.append((name, kind, f))
        values.append("%s")
    # SET clause: col = col + %s, col = CASE WHEN col < %s THEN %s ELSE col END, col = %s.
    parts, _ = assignments(model, dict.fromkeys(incs, 0), dict.fromkeys(maxes, 0), dict.fromkeys(sets))
    plan += [(name, "inc_by", None) for name in incs]
    plan += [(name, "max_by", None) for name in maxes]
    plan += [(name, "set", model._meta.get_field(name)) for name in sets]
    if vendor == "mysql":
        # Without VALUES()/row aliases: they differ between MySQL 8 and MariaDB.
        tail = f"ON DUPLICATE KEY UPDATE {', '.join(parts)}"
    else:  # sqlite (>= 3.24); the target is the unique key (any column order)
        target = ", ".join(qn(model._meta.get_field(k).column) for k in keys)
        tail = f"ON CONFLICT ({target}) DO UPDATE SET {', '.join(parts)}"
    # Identifiers and literals come from our own model definitions only; every value is a parameter.
    sql = (f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "  # noqa: S608
           f"VALUES ({', '.join(values)}) {tail}")
    return sql, plan


def upsert(model, keys: dict[str, Any], incs: dict[str, float] | None = None,
           maxes: dict[str, float] | None = None, sets: dict[str, Any] | None = None) -> None:
    """Apply col = col + x (``incs``), col = max(col, x) (``maxes``) and col = value (``sets``)
    to the row identified by ``keys`` (a unique key), creating it first if missing.

    ONE statement on MySQL/MariaDB (``INSERT ... ON DUPLICATE KEY UPDATE``) and SQLite
    (``INSERT ... ON CONFLICT (...) DO UPDATE``): the new row is what the update makes of a
    row holding the model's defaults.  Concurrent workers never lose a count: the database
    inserts or updates atomically.  Other backends: UPDATE, and if no row matched, INSERT
    (in a savepoint, a concurrent insert wins) and UPDATE again.

    Plain SQL because this runs for every finished run: the ORM spends longer compiling a
    dozen F() expressions than the database spends executing them.
    """
    incs, maxes, sets = incs or {}, maxes or {}, sets or {}
    if connection.vendor not in ("mysql", "sqlite"):
        if update_sql(model, keys, incs, maxes, sets):
            return
        try:
            with transaction.atomic():
                model.objects.create(**keys)
        except IntegrityError:
            pass  # created concurrently by another worker: fine, update it
        update_sql(model, keys, incs, maxes, sets)
        return
    sql, plan = _upsert_statement(model, connection.vendor, tuple(keys), tuple(incs), tuple(maxes), tuple(sets))
    params: list[Any] = []
    for name, kind, extra in plan:
        if kind == "inc":
            params.append(extra + incs[name])
        elif kind == "inc_by":
            params.append(incs[name])
        elif kind == "max":
            params.append(max(extra, maxes[name]))
        elif kind == "max_by":
            params += [maxes[name], maxes[name]]
        elif kind == "key":
            params.append(prep(extra, keys[name]))
        elif kind == "set":
            params.append(prep(extra, sets[name]))
        else:  # a default that is not a constant number (callable, text)
            params.append(prep(extra, extra.get_default()))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def run_increments(state: str, duration: float | None, memory: float | None, cpu: float | None,
                   wait: float | None) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """What one finished run adds: (all-time increments, hourly increments, hourly maxima).

    Shared by the per-run update and the rebuild from history, so both count alike.
    """
    total: dict[str, float] = {"runs_total": 1}
    hour: dict[str, float] = {"runs": 1}
    hour_max: dict[str, float] = {}
    if state in COUNTED_STATES:
        total[f"n_{state}"] = 1
    if state == RunState.SUCCEEDED:
        hour["succeeded"] = 1
    elif state in FAILURE_STATES:
        hour["failures"] = 1
    elif state in (RunState.SKIPPED, RunState.MISSED):
        hour["missed"] = 1

    def count(name: str, value: float, bins: Sequence[str], edges: Sequence[float]) -> None:
        v = max(0.0, float(value))
        col = bins[bin_index(v, edges)]
        for target in (total, hour):
            target.update({f"{name}_count": 1, f"{name}_sum": v, col: 1})
        hour_max[f"{name}_max"] = v

    if duration is not None:
        count("duration", duration, DURATION_BIN_FIELDS, DURATION_EDGES)
        if memory is not None:
            count("memory", memory, MEMORY_BIN_FIELDS, MEMORY_EDGES)
    if cpu is not None:
        total["cpu_sum"] = hour["cpu_sum"] = float(cpu)
    if wait is not None:
        total["queue_wait_sum"] = float(wait)
        total["queue_wait_count"] = 1
    return total, hour, hour_max


def record(run: JobRun, *, recent: tuple[int, float | None, float | None] | None = None,
           now: dt.datetime | None = None) -> None:
    """Count one finished run into the job's all-time and hourly statistics.

    ``recent`` (from :func:`recent_window`) is stored alongside for the trend view.
    """
    now = now or timezone.now()
    state = str(run.state)
    when = run.finished_at or now
    total, hour, hour_max = run_increments(state, run.duration_s, run.peak_memory_mb, run.cpu_seconds,
                                           run.queue_wait_s)
    total_set: dict[str, Any] = {"updated_at": now}
    if state == RunState.SUCCEEDED:
        total["runs_since_baseline"] = 1
    if recent is not None:
        total_set.update(recent_runs=recent[0], recent_duration_p50=recent[1], recent_memory_p50=recent[2])
    upsert(JobStats, {"job_id": run.job_id}, total, sets=total_set)
    upsert(JobStatsHour, {"job_id": run.job_id, "hour": hour_of(when)}, hour, hour_max)


# --- rolling window ------------------------------------------------------------------------

def _window_start(now: dt.datetime, hours: int) -> dt.datetime:
    """The first hourly bucket of the window: the current (partial) hour plus hours-1 before."""
    return hour_of(now) - dt.timedelta(hours=hours - 1)


def _summarise(row: dict[str, Any]) -> dict[str, Any]:
    percentiles = DURATION_BIN_FIELDS[0] in row
    d_counts = [row[f] or 0 for f in DURATION_BIN_FIELDS] if percentiles else []
    m_counts = [row[f] or 0 for f in MEMORY_BIN_FIELDS] if percentiles else []
    runs = row["runs"] or 0
    executed = row["duration_count"] or 0
    mem_n = row["memory_count"] or 0
    return {
        "runs": runs,
        "succeeded": row["succeeded"] or 0,
        "failures": row["failures"] or 0,
        "missed": row["missed"] or 0,
        "failure_rate": round((row["failures"] or 0) / runs, 4) if runs else None,
        "duration_avg": (row["duration_sum"] or 0.0) / executed if executed else None,
        "duration_p95": percentile_from_bins(d_counts, DURATION_EDGES, 0.95, row["duration_max"])
        if percentiles else None,
        "duration_max": row["duration_max"] if executed else None,
        "memory_avg": (row["memory_sum"] or 0.0) / mem_n if mem_n else None,
        "memory_p95": percentile_from_bins(m_counts, MEMORY_EDGES, 0.95, row["memory_max"]) if percentiles else None,
        "memory_max": row["memory_max"] if mem_n else None,
        "cpu_seconds": row["cpu_sum"] or 0.0,
    }


EMPTY_ROLLING: dict[str, Any] = _summarise({
    **{f: 0 for f in DURATION_BIN_FIELDS + MEMORY_BIN_FIELDS},
    "runs": 0, "succeeded": 0, "failures": 0, "missed": 0, "duration_count": 0, "duration_sum": 0.0,
    "duration_max": 0.0, "memory_count": 0, "memory_sum": 0.0, "memory_max": 0.0, "cpu_sum": 0.0,
})


def rolling(jobs_qs: QuerySet[Job] | Iterable[int] | None = None, *, hours: int = 24,
            now: dt.datetime | None = None, percentiles: bool = True) -> dict[int, dict[str, Any]]:
    """Rolling figures per job id over the last ``hours`` hours, in ONE grouped query.

    Keys of each value: runs, succeeded, failures, missed, failure_rate, duration_avg,
    duration_p95, duration_max, memory_avg, memory_p95, memory_max, cpu_seconds.
    ``percentiles=False`` skips summing the histogram bins (several times cheaper over
    many jobs); the p95 keys are then None.  Jobs without a run in the window are absent
    (use :data:`EMPTY_ROLLING`).
    """
    now = now or timezone.now()
    qs = JobStatsHour.objects.filter(hour__gte=_window_start(now, hours))
    if jobs_qs is not None:
        ids = jobs_qs.values("pk") if isinstance(jobs_qs, QuerySet) else list(jobs_qs)
        qs = qs.filter(job_id__in=ids)
    bins = (*DURATION_BIN_FIELDS, *MEMORY_BIN_FIELDS) if percentiles else ()
    sums = {f: Sum(f) for f in (*bins, "runs", "succeeded", "failures", "missed",
                                 "duration_count", "duration_sum", "memory_count", "memory_sum", "cpu_sum")}
    rows = qs.order_by().values("job_id").annotate(
        **{f"s_{k}": v for k, v in sums.items()}, s_duration_max=Max("duration_max"), s_memory_max=Max("memory_max"))
    return {row["job_id"]: _summarise({k[2:]: v for k, v in row.items() if k.startswith("s_")}) for row in rows}


def rolling_for(job: Job | int, *, hours: int = 24, now: dt.datetime | None = None) -> dict[str, Any]:
    job_id = job if isinstance(job, int) else job.pk
    return rolling([job_id], hours=hours, now=now).get(job_id, dict(EMPTY_ROLLING))


def prune_hours(keep_hours: int, now: dt.datetime | None = None) -> int:
    """Delete hourly buckets that no window needs any more."""
    cutoff = _window_start(now or timezone.now(), keep_hours)
    deleted, _ = JobStatsHour.objects.filter(hour__lt=cutoff).delete()
    return deleted


# --- rebuild from history -----------------------------------------------------------------

def rebuild(jobs_qs: QuerySet[Job] | None = None, *, now: dt.datetime | None = None, chunk_jobs: int = 100) -> int:
    """Recompute JobStats and the kept hourly buckets from the run history.

    For upgrades (history recorded before these tables existed) and imports; streams the
    runs once, a chunk of jobs at a time.  Run it while the jobs are quiet: a run finishing
    during the rebuild of its job may be counted twice or not at all.  Returns runs counted.
    Note that the all-time counters then only cover the runs still in the history.
    """
    now = now or timezone.now()
    keep_from = _window_start(now, _stats_hours_kept())
    ids = list((jobs_qs if jobs_qs is not None else Job.objects.all()).order_by("pk").values_list("pk", flat=True))
    counted = 0
    for i in range(0, len(ids), chunk_jobs):
        chunk = ids[i:i + chunk_jobs]
        totals: dict[int, dict[str, Any]] = {}
        hours: dict[tuple[int, dt.datetime], dict[str, Any]] = {}
        rows = (JobRun.objects.filter(job_id__in=chunk, state__in=COUNTED_STATES).order_by()
                .values_list("job_id", "state", "duration_s", "peak_memory_mb", "cpu_seconds", "queue_wait_s",
                             "finished_at", "scheduled_for").iterator(chunk_size=5000))
        for job_id, state, d, m, cpu, wait, finished, planned in rows:
            counted += 1
            inc_total, inc_hour, inc_max = run_increments(state, d, m, cpu, wait)
            t = totals.setdefault(job_id, _zero_totals())
            for key, value in inc_total.items():
                t[key] += value
            when = finished or planned
            if when >= keep_from:
                h = hours.setdefault((job_id, hour_of(when)), _zero_hour())
                for key, value in inc_hour.items():
                    h[key] += value
                for key, value in inc_max.items():
                    h[key] = max(h[key], value)
        with transaction.atomic():
            JobStatsHour.objects.filter(job_id__in=chunk).delete()
            JobStats.objects.filter(job_id__in=chunk).delete()
            JobStats.objects.bulk_create([JobStats(job_id=j, updated_at=now, **v) for j, v in totals.items()],
                                         batch_size=200)
            JobStatsHour.objects.bulk_create([JobStatsHour(job_id=j, hour=hr, **v) for (j, hr), v in hours.items()],
                                             batch_size=500)
        from jobs.conf import conf

        for job_id in totals:
            n, d50, m50 = recent_window(job_id, conf.TREND_WINDOW)
            JobStats.objects.filter(job_id=job_id).update(recent_runs=n, recent_duration_p50=d50,
                                                          recent_memory_p50=m50)
    return counted


def _stats_hours_kept() -> int:
    from jobs.conf import conf

    return int(conf.STATS_HOURS_KEPT)


def _zero_totals() -> dict[str, Any]:
    out: dict[str, Any] = {f: 0 for f in DURATION_BIN_FIELDS + MEMORY_BIN_FIELDS}
    out.update({f"n_{s}": 0 for s in COUNTED_STATES})
    out.update(runs_total=0, duration_count=0, duration_sum=0.0, memory_count=0, memory_sum=0.0, cpu_sum=0.0,
               queue_wait_sum=0.0, queue_wait_count=0)
    return out


def _zero_hour() -> dict[str, Any]:
    out: dict[str, Any] = {f: 0 for f in DURATION_BIN_FIELDS + MEMORY_BIN_FIELDS}
    out.update(runs=0, succeeded=0, failures=0, missed=0, duration_count=0, duration_sum=0.0, duration_max=0.0,
               memory_count=0, memory_sum=0.0, memory_max=0.0, cpu_sum=0.0)
    return out
