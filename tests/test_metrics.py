"""Run statistics, the rolling window, health/trend queries and the /metrics endpoint."""

from __future__ import annotations

import datetime as dt
import json
import random
import types
from io import StringIO

import numpy as np
import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs import health, metrics, services, stats
from jobs.models import DURATION_EDGES, MEMORY_EDGES, Alert, Job, JobRun, JobStats, JobStatsHour, RunState

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def traveller():
    with time_machine.travel(T0, tick=False) as t:
        yield t


def finish_run(job: Job, traveller, *, state: str = RunState.SUCCEEDED, duration: float | None = 2.0,
               memory: float | None = 50.0, step: dt.timedelta = dt.timedelta(minutes=1)) -> JobRun:
    traveller.shift(step)
    planned = timezone.now().replace(second=0, microsecond=0)
    run, _ = services.create_run(job, planned)
    assert run.transition(RunState.PENDING, RunState.RUNNING, started_at=planned)
    assert services.close_run(run, RunState.RUNNING, state, duration_s=duration, peak_memory_mb=memory,
                              cpu_seconds=1.0 if duration else None, exit_code=0 if state == "succeeded" else 1,
                              queue_wait_s=0.02)
    return run


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_p95_is_close_to_the_exact_one(seed):
    rng = np.random.default_rng(seed)
    for values, edges in ((rng.lognormal(2.0, 0.8, 500), DURATION_EDGES), (rng.lognormal(5.0, 0.3, 300), MEMORY_EDGES)):
        counts = [0] * (len(edges) + 1)
        for v in values:
            counts[stats.bin_index(float(v), edges)] += 1
        estimate = stats.percentile_from_bins(counts, edges, 0.95, float(values.max()))
        exact = float(np.percentile(values, 95))
        assert abs(estimate - exact) / exact < 0.2, (estimate, exact)
    assert stats.percentile_from_bins([0, 0], [1.0], 0.95) is None


def test_every_run_is_counted_and_the_window_rolls(make_job, traveller):
    job = make_job("counted")
    durations = [random.Random(i).uniform(1.0, 3.0) for i in range(20)]
    for d in durations[:10]:
        finish_run(job, traveller, duration=d, memory=100.0)
    # 20 hours later: those ten are still inside the 24 h window, then more runs.
    traveller.shift(dt.timedelta(hours=20))
    for d in durations[10:]:
        finish_run(job, traveller, duration=d, memory=200.0)
    finish_run(job, traveller, state=RunState.FAILED, duration=0.5, memory=20.0)
    finish_run(job, traveller, state=RunState.MISSED, duration=None, memory=None)
    roll = stats.rolling_for(job)
    assert (roll["runs"], roll["succeeded"], roll["failures"], roll["missed"]) == (22, 20, 1, 1)
    assert roll["failure_rate"] == pytest.approx(1 / 22, abs=1e-4)
    assert roll["duration_avg"] == pytest.approx((sum(durations) + 0.5) / 21)
    exact_p95 = float(np.percentile(durations + [0.5], 95))
    assert roll["duration_p95"] == pytest.approx(exact_p95, rel=0.2)
    assert roll["duration_max"] == pytest.approx(max(durations))
    assert roll["memory_max"] == 200.0 and 100.0 < roll["memory_p95"] <= 200.0
    # Six hours on, the first ten dropped out of the window; all-time counters keep them.
    traveller.shift(dt.timedelta(hours=6))
    roll = stats.rolling_for(job)
    assert roll["runs"] == 12 and roll["memory_avg"] == pytest.approx((10 * 200 + 20) / 11)
    total = JobStats.objects.get(job=job)
    assert (total.runs_total, total.n_succeeded, total.n_failed, total.n_missed) == (22, 20, 1, 1)
    assert total.duration_count == 21 and total.queue_wait_count == 22
    assert JobStatsHour.objects.filter(job=job).count() == 2


def test_the_stats_upsert_inserts_then_updates_one_row_in_one_statement(make_job):
    """stats.upsert against the real database: a missing (job, hour) row is created with the
    increments/maxima applied to the model defaults; a second call adds to the same row."""
    job = make_job("upserted")
    hour = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
    keys = {"job_id": job.pk, "hour": hour}
    with CaptureQueriesContext(connection) as ctx:
        stats.upsert(JobStatsHour, keys, {"runs": 1, "succeeded": 1, "duration_sum": 2.5, "d05": 1},
                     {"duration_max": 2.5})
    assert len(ctx.captured_queries) == 1, ctx.captured_queries
    row = JobStatsHour.objects.get(job=job, hour=hour)
    assert (row.runs, row.succeeded, row.failures, row.duration_sum, row.duration_max, row.d05, row.d06) == (
        1, 1, 0, 2.5, 2.5, 1, 0)
    assert row.memory_count == 0 and row.memory_max == 0.0 and row.cpu_sum == 0.0
    with CaptureQueriesContext(connection) as ctx:
        stats.upsert(JobStatsHour, keys, {"runs": 1, "failures": 1, "duration_sum": 1.25, "d05": 1, "d06": 1},
                     {"duration_max": 1.25})
    assert len(ctx.captured_queries) == 1, ctx.captured_queries
    stats.upsert(JobStatsHour, keys, {"runs": 1}, {"duration_max": 7.0})
    assert JobStatsHour.objects.filter(job=job).count() == 1
    row.refresh_from_db()
    assert (row.runs, row.succeeded, row.failures, row.duration_sum, row.duration_max, row.d05, row.d06) == (
        3, 1, 1, 3.75, 7.0, 2, 1)
    # A second hour is a second row; JobStats (primary key job_id) with plain values too.
    stats.upsert(JobStatsHour, {"job_id": job.pk, "hour": hour + dt.timedelta(hours=1)}, {"runs": 1})
    assert JobStatsHour.objects.filter(job=job).count() == 2
    JobStats.objects.filter(job=job).delete()
    later = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)
    stats.upsert(JobStats, {"job_id": job.pk}, {"runs_total": 1, "n_succeeded": 1, "runs_since_baseline": 1},
                 sets={"updated_at": later, "recent_duration_p50": 2.0, "recent_runs": 1})
    stats.upsert(JobStats, {"job_id": job.pk}, {"runs_total": 1, "n_failed": 1},
                 sets={"updated_at": later + dt.timedelta(minutes=1), "reference_memory_p50": 64.5})
    total = JobStats.objects.get(job=job)
    assert (total.runs_total, total.n_succeeded, total.n_failed, total.runs_since_baseline, total.recent_runs) == (
        2, 1, 1, 1, 1)
    assert (total.recent_duration_p50, total.reference_memory_p50, total.reference_duration_p50) == (2.0, 64.5, None)
    assert total.updated_at == later + dt.timedelta(minutes=1)


def test_rebuilding_from_history_gives_the_same_figures_as_recording(make_job, traveller):
    job = make_job("rebuilt")
    rng = random.Random(7)
    for i in range(30):
        state = RunState.FAILED if i % 7 == 0 else RunState.SUCCEEDED
        finish_run(job, traveller, state=state, duration=rng.uniform(0.1, 50), memory=rng.uniform(1, 900),
                   step=dt.timedelta(minutes=37))
    # Baseline bookkeeping differs on purpose: the command recomputes the baseline now.
    skip = ("job", "updated_at", "runs_since_baseline", "reference_duration_p50", "reference_memory_p50")
    fields = [f.name for f in JobStats._meta.concrete_fields if f.name not in skip]
    recorded = JobStats.objects.filter(job=job).values(*fields).get()
    hours = list(JobStatsHour.objects.filter(job=job).order_by("hour").values())
    out = StringIO()
    call_command("recalculate_baselines", "--rebuild-stats", stdout=out)
    assert "statistics rebuilt from 30 run(s)" in out.getvalue()
    rebuilt = JobStats.objects.filter(job=job).values(*fields).get()
    assert {k: pytest.approx(v) if isinstance(v, float) else v for k, v in recorded.items()} == rebuilt
    assert [{k: v for k, v in h.items() if k != "id"} for h in hours] == [
        {k: pytest.approx(v) if isinstance(v, float) else v for k, v in h.items() if k != "id"}
        for h in JobStatsHour.objects.filter(job=job).order_by("hour").values()]


def test_health_and_trend_queries_do_not_grow_with_the_number_of_jobs(make_job, traveller):
    first = make_job("job-0")
    for _ in range(3):
        finish_run(first, traveller)

    def queries(fn) -> int:
        with CaptureQueriesContext(connection) as ctx:
            fn()
        return len(ctx.captured_queries)

    few = (queries(health.health_summary), queries(health.performance_trends))
    for i in range(1, 15):
        job = make_job(f"job-{i}")
        finish_run(job, traveller)
        Alert.objects.create(job=job, type="failure", severity="error", message="x", dedup_key=f"{job.pk}:failure")
    assert (queries(health.health_summary), queries(health.performance_trends)) == few
    assert few[0] <= 3 and few[1] == 1
    rows = health.health_summary()
    assert len(rows) == 15
    row = next(r for r in rows if r["name"] == "job-3")
    assert set(row) >= {"job_id", "name", "health", "execution_status", "consecutive_failures", "runs_24h",
                        "failures_24h", "open_alerts", "duration_p95_24h", "memory_p95_24h", "circuit_open"}
    assert (row["health"], row["execution_status"], row["runs_24h"], row["open_alerts"]) == ("warning", "ok", 1, 1)
    only_first = health.health_summary(Job.objects.filter(name="job-0"), percentiles=True)[0]
    assert only_first["runs_24h"] == 3 and only_first["duration_p95_24h"] == pytest.approx(2.0)
    assert row["duration_avg_24h"] == pytest.approx(2.0) and row["duration_p95_24h"] is None
    trend = health.performance_trends()[0]
    assert trend["status"] == "learning" and trend["percent_slower"] is None


def test_health_summary_command(make_job, traveller):
    job = make_job("cmd")
    finish_run(job, traveller, state=RunState.FAILED)
    out = StringIO()
    call_command("health_summary", "--json", stdout=out)
    [row] = json.loads(out.getvalue())
    assert row["name"] == "cmd" and row["execution_status"] == "failing" and row["health"] == "warning"
    out = StringIO()
    call_command("health_summary", "--trends", stdout=out)
    assert "1 learning" in out.getvalue()


def test_a_crashed_execute_task_closes_its_run_as_lost(make_job):
    job = make_job("crashy")
    run, _ = services.create_run(job, timezone.now())
    run.transition(RunState.PENDING, RunState.RUNNING, started_at=timezone.now())
    metrics.on_execute_failure(sender=types.SimpleNamespace(name="jobs.tick"), exception=RuntimeError("x"),
                               args=[run.pk])
    assert JobRun.objects.get(pk=run.pk).state == RunState.RUNNING  # another task: ignored
    metrics.on_execute_failure(sender=types.SimpleNamespace(name="jobs.execute"),
                               exception=RuntimeError("database went away"), args=[run.pk])
    run.refresh_from_db()
    assert run.state == RunState.LOST and "database went away" in run.error
    assert Alert.objects.filter(job=job, type=Alert.Type.LOST).exists()
    assert JobStats.objects.get(job=job).n_lost == 1


# --- /metrics ---------------------------------------------------------------------------------

def scrape(client: Client, **extra) -> tuple[int, dict]:
    response = client.get("/metrics", **extra)
    if response.status_code != 200:
        return response.status_code, {}
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    return 200, families


def test_metrics_endpoint_serves_job_and_slot_series(make_job, traveller):
    job = make_job("exported", slot="light")
    for d in (0.3, 1.5, 7.0):
        finish_run(job, traveller, duration=d, memory=30.0)
    finish_run(job, traveller, state=RunState.TIMED_OUT, duration=60.0, memory=30.0)
    services.create_run(job, timezone.now() + dt.timedelta(hours=1))  # pending: waiting in its slot
    status, fam = scrape(Client(REMOTE_ADDR="127.0.0.1"))
    assert status == 200
    runs = {(s.labels["job_name"], s.labels["state"]): s.value for s in fam["smartcron_job_runs"].samples
            if s.name.endswith("_total")}
    assert runs[("exported", "succeeded")] == 3 and runs[("exported", "timed_out")] == 1
    assert runs[("exported", "failed")] == 0
    slot_runs = {(s.labels["slot"], s.labels["state"]): s.value for s in fam["smartcron_slot_runs"].samples
                 if s.name.endswith("_total")}
    assert slot_runs[("light", "succeeded")] == 3
    hist = {(s.name, s.labels.get("le")): s.value for s in fam["smartcron_job_duration_seconds"].samples}
    assert hist[("smartcron_job_duration_seconds_count", None)] == 4
    assert hist[("smartcron_job_duration_seconds_sum", None)] == pytest.approx(68.8)
    assert hist[("smartcron_job_duration_seconds_bucket", "0.8")] == 1
    assert hist[("smartcron_job_duration_seconds_bucket", "+Inf")] == 4
    mem = {s.labels.get("le"): s.value for s in fam["smartcron_slot_peak_memory_bytes"].samples
           if s.name.endswith("_bucket")}
    assert mem["+Inf"] == 4
    waiting = {s.labels["slot"]: s.value for s in fam["smartcron_slot_waiting_runs"].samples}
    assert waiting["light"] == 1 and waiting["default"] == 0
    alerts = {(s.labels["type"], s.labels["severity"]): s.value for s in fam["smartcron_open_alerts"].samples}
    assert alerts[("timeout", "error")] == 1
    health_gauge = {s.labels["job_name"]: s.value for s in fam["smartcron_job_health"].samples}
    assert health_gauge["exported"] == 1


def test_per_job_histograms_can_be_switched_off(make_job, settings):
    settings.METRICS_JOB_HISTOGRAMS = False
    make_job("many")
    status, fam = scrape(Client(REMOTE_ADDR="127.0.0.1"))
    assert status == 200 and "smartcron_job_duration_seconds" not in fam
    assert "smartcron_slot_duration_seconds" in fam and "smartcron_job_runs" in fam


def test_metrics_access_rules(make_job, settings):
    assert scrape(Client(REMOTE_ADDR="10.1.2.3"))[0] == 403
    assert scrape(Client(REMOTE_ADDR="::1"))[0] == 200
    # Through a reverse proxy on the same host, every client would look local: refused.
    assert scrape(Client(REMOTE_ADDR="127.0.0.1"), HTTP_X_FORWARDED_FOR="203.0.113.9")[0] == 403
    settings.METRICS_TOKEN = "t0ken"
    client = Client(REMOTE_ADDR="10.1.2.3")
    response = client.get("/metrics")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert scrape(client, HTTP_AUTHORIZATION="Bearer wrong")[0] == 401
    assert scrape(client, HTTP_AUTHORIZATION="Bearer t0ken")[0] == 200
    assert Client(REMOTE_ADDR="127.0.0.1").post("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").status_code == 405
