"""Benchmark of run recording (stats, baseline, anomaly, alerts, breaker, health) and of the
health summary / performance trend queries, on a big history.

Run from the repository root:

    .venv/bin/python bench/bench_recording.py                    # 1,000 jobs, 1,000,000 runs, SQLite
    .venv/bin/python bench/bench_recording.py --quick            # 200 jobs, 100,000 runs
    .venv/bin/python bench/bench_recording.py --database-url "$BENCH_DATABASE_URL"  # MySQL/MariaDB

(``BENCH_DATABASE_URL``: a mysql:// URL kept in your environment, the default of
``--database-url``; never type the password on the command line.)

SQLite lives in a temporary SMARTCRON_VAR_DIR (deleted afterwards unless --keep).  With a
MySQL/MariaDB DATABASE_URL, give it a dedicated database: the bench creates it if missing,
migrates it and EMPTIES the jobs tables first.  Without REDIS_URL a throwaway Redis is
started (recording reads the dependency links' cache generation from Redis, as in
production).  The history is bulk-inserted with raw executemany (jobs of every
minute / 5 / 15 / 60 minutes, lognormal durations and peaks, 95% successes, 4% failures,
1% missed), the statistics are rebuilt from it and every baseline computed, then:

* recording: ``services.close_run`` of a RUNNING run -> record_finished -> the
  observability hook, as a worker does it (5% of the samples 5x slower, 3% failures);
  p50/p99/max of the whole call, of record_finished, of the hook alone and of the commit
  (on SQLite a commit that runs a WAL auto-checkpoint takes several ms);
* ``health_summary()``, ``performance_trends()`` and a /metrics render: median and max.

Targets: recording p99 < 20 ms; each summary query < 200 ms.  Timings are wall-clock on
whatever machine runs this; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PERIODS = ((60, 0.1), (300, 0.3), (900, 0.3), (3600, 0.3))  # seconds, share of the jobs
TABLES = ("jobs_notificationattempt", "jobs_alert", "jobs_jobstatshour", "jobs_jobstats", "jobs_jobrun",
          "jobs_jobdependency", "jobs_job_tags", "jobs_job")


def start_redis(tmp: Path):
    """A throwaway Redis on a free loopback port unless REDIS_URL is set (its ``stop()`` ends it).

    Recording touches Redis as in production (the dependency hook's link cache), so a
    bench without one would time connection errors instead.
    """
    if os.environ.get("REDIS_URL"):
        return None
    from tests.helpers import RedisServer

    server = RedisServer(tmp / "redis")
    os.environ["REDIS_URL"] = server.url
    return server


def create_mysql_database(database_url: str) -> None:
    """CREATE DATABASE IF NOT EXISTS for a mysql:// URL (the user needs the privilege)."""
    from urllib.parse import unquote, urlsplit

    import MySQLdb

    url = urlsplit(database_url)
    name = url.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"unexpected database name {name!r}")
    conn = MySQLdb.connect(host=url.hostname or "127.0.0.1", port=url.port or 3306, user=unquote(url.username or ""),
                           password=unquote(url.password or ""))
    try:
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


def setup_django(database_url: str | None, tmp: Path) -> None:
    if database_url and database_url.startswith("mysql"):
        create_mysql_database(database_url)
    os.environ["SMARTCRON_VAR_DIR"] = str(tmp)
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    os.environ["DJANGO_SETTINGS_MODULE"] = "smartcron_project.settings"
    # Alerts are recorded but never sent anywhere from a benchmark.
    for var in ("SMARTCRON_ALERT_EMAILS", "SMARTCRON_ALERT_WEBHOOK_URLS"):
        os.environ.pop(var, None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def empty_tables() -> None:
    from django.db import connection

    if connection.vendor != "mysql":
        return
    with connection.cursor() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS=0")
        for table in TABLES:
            cur.execute(f"TRUNCATE TABLE {table}")
        cur.execute("SET FOREIGN_KEY_CHECKS=1")


def create_jobs(n: int, rng: np.random.Generator) -> list[tuple[int, int, float, float]]:
    """Jobs (bulk, no beat sync); returns (id, period, median duration, median peak)."""
    from jobs.models import Job
    from slots.models import ExecutionSlot, ensure_default_slots

    ensure_default_slots()
    slots = list(ExecutionSlot.objects.order_by("name"))
    script = str(ROOT / "examples" / "heartbeat.sh")
    periods = rng.choice([p for p, _ in PERIODS], size=n, p=[s for _, s in PERIODS])
    durations = np.clip(rng.lognormal(np.log(5.0), 1.0, n), 0.05, 3000)
    memories = np.clip(rng.lognormal(np.log(80.0), 0.8, n), 2, 8000)
    Job.objects.bulk_create([
        Job(name=f"bench-{i:05d}", script_path=script, slot=slots[i % len(slots)], schedule_type="manual",
            expected_duration_s=float(durations[i]), expected_memory_mb=float(memories[i]))
        for i in range(n)], batch_size=500)
    ids = list(Job.objects.order_by("name").values_list("pk", flat=True))
    return [(ids[i], int(periods[i]), float(durations[i]), float(memories[i])) for i in range(n)]


def insert_history(jobs: list[tuple[int, int, float, float]], total: int, rng: np.random.Generator,
                   now: dt.datetime) -> int:
    """Raw executemany of ``total`` final runs, spread evenly over the jobs."""
    from django.db import connection, transaction

    from jobs.models import JobRun

    per_job = max(1, total // len(jobs))
    table = JobRun._meta.db_table
    cols = ("job_id", "scheduled_for", "state", "trigger", "attempt", "slot_name", "created_at", "started_at",
            "finished_at", "duration_s", "queue_wait_s", "exit_code", "peak_memory_mb", "cpu_seconds", "output_tail",
            "error", "worker_host")
    qn = connection.ops.quote_name  # "trigger" is a reserved word in MySQL
    sql = f"INSERT INTO {qn(table)} ({', '.join(qn(c) for c in cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    n = 0
    batch: list[tuple] = []
    with connection.cursor() as cur:
        for job_id, period, dmed, mmed in jobs:
            noise_d = rng.lognormal(0.0, 0.15, per_job)
            noise_m = rng.lognormal(0.0, 0.10, per_job)
            states = rng.random(per_job)
            start = now - dt.timedelta(seconds=period * per_job)
            for k in range(per_job):
                planned = start + dt.timedelta(seconds=period * k)
                p = planned.strftime(fmt)
                if states[k] < 0.01:
                    row = (job_id, p, "missed", "schedule", 1, "", p, None, p, None, None, None, None, None, "",
                           "not admitted within its start window", "")
                else:
                    d = float(dmed * noise_d[k])
                    ok = states[k] >= 0.05
                    row = (job_id, p, "succeeded" if ok else "failed", "schedule", 1, "default", p, p,
                           (planned + dt.timedelta(seconds=d)).strftime(fmt), d, 0.003, 0 if ok else 1,
                           float(mmed * noise_m[k]), d * 0.4, "done\n", "" if ok else "exit code 1", "bench")
                batch.append(row)
                if len(batch) >= 20000:
                    with transaction.atomic():
                        cur.executemany(sql, batch)
                    n += len(batch)
                    batch.clear()
        if batch:
            with transaction.atomic():
                cur.executemany(sql, batch)
            n += len(batch)
    return n


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_recording(jobs: list[tuple[int, int, float, float]], samples: int, rng: np.random.Generator) -> dict:
    from django.db import connection

    from jobs import hooks, services
    from jobs.models import Job, JobRun, RunState

    # Spread the "successes since the last baseline" counters so that 1 in 10 recordings
    # also recomputes a baseline, as in steady state.
    with connection.cursor() as cur:
        cur.execute("UPDATE jobs_jobstats SET runs_since_baseline = job_id % 10")
    hook_times: list[float] = []
    original = list(hooks._run_finished)

    def timed(callback):
        def wrapper(run):
            t = time.perf_counter()
            try:
                callback(run)
            finally:
                hook_times.append(time.perf_counter() - t)
        return wrapper

    hooks._run_finished[:] = [timed(cb) if getattr(cb, "__module__", "") == "jobs.metrics" else cb
                              for cb in original]
    # record_finished as a whole (job update, alerts, every hook): the rest of close_run is
    # the fenced UPDATE of the run row itself.
    record_times: list[float] = []
    original_record = services.record_finished

    def timed_record(run):
        t = time.perf_counter()
        try:
            original_record(run)
        finally:
            record_times.append(time.perf_counter() - t)

    services.record_finished = timed_record
    # The commit alone (on SQLite, about one commit in 50 also runs the WAL auto-checkpoint).
    commit_times: list[float] = []
    original_commit = connection.commit

    def timed_commit():
        t = time.perf_counter()
        try:
            return original_commit()
        finally:
            commit_times.append(time.perf_counter() - t)

    connection.commit = timed_commit
    totals: list[float] = []
    commits: list[float] = []
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    try:
        for i in range(samples + 20):
            job_id, _, dmed, mmed = jobs[int(rng.integers(len(jobs)))]
            r = rng.random()
            state = RunState.FAILED if r < 0.03 else RunState.SUCCEEDED
            d = dmed * float(rng.lognormal(0, 0.15)) * (5.0 if 0.03 <= r < 0.08 else 1.0)
            planned = base + dt.timedelta(seconds=i)
            run = JobRun.objects.create(job_id=job_id, scheduled_for=planned, state=RunState.RUNNING,
                                        started_at=planned, slot_name="default", heartbeat_at=planned)
            run.job = Job.objects.select_related("slot").get(pk=job_id)  # as execute() has it
            hook_times_before = len(hook_times)
            t = time.perf_counter()
            services.close_run(run, RunState.RUNNING, state, finished_at=planned + dt.timedelta(seconds=d),
                               duration_s=round(d, 4), exit_code=0 if state == RunState.SUCCEEDED else 1,
                               peak_memory_mb=round(mmed * float(rng.lognormal(0, 0.1)), 3), cpu_seconds=d * 0.4,
                               output_tail="done\n", error="" if state == RunState.SUCCEEDED else "exit code 1")
            elapsed = time.perf_counter() - t
            if i >= 20:  # warm-up: imports, connection, query plans
                totals.append(elapsed)
                commits.append(commit_times[-1] if commit_times else 0.0)
            else:
                record_times.pop()
                if len(hook_times) > hook_times_before:
                    hook_times.pop()
    finally:
        hooks._run_finished[:] = original
        services.record_finished = original_record
        del connection.commit  # back to the class's method
    return {"total": totals, "hook": hook_times, "record": record_times, "commit": commits}


def bench_queries(repeat: int) -> dict[str, list[float]]:
    from jobs import health, prom

    out: dict[str, list[float]] = {"health_summary": [], "performance_trends": [], "metrics_render": []}
    for _ in range(repeat):
        for name, fn in (("health_summary", health.health_summary), ("performance_trends", health.performance_trends),
                         ("metrics_render", prom.render)):
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="Number of jobs (default 1000).")
    parser.add_argument("--runs", type=int, default=1_000_000, help="Runs of history (default 1,000,000).")
    parser.add_argument("--quick", action="store_true", help="200 jobs and 100,000 runs (overrides the two above).")
    parser.add_argument("--samples", type=int, default=500, help="Recordings timed (default 500).")
    parser.add_argument("--repeat", type=int, default=5, help="Repetitions of each query (default 5).")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"),
                        help="mysql://... to bench MySQL/MariaDB (a dedicated database: it is emptied); "
                             "default $BENCH_DATABASE_URL.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (SQLite database).")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.runs = 200, 100_000
    tmp = Path(tempfile.mkdtemp(prefix="smartcron-bench-"))
    rng = np.random.default_rng(args.seed)
    redis_proc = start_redis(tmp)
    try:
        setup_django(args.database_url, tmp)
        from django.db import connection
        from django.utils import timezone

        from jobs import baselines, stats

        empty_tables()
        print(f"database   {connection.vendor} {connection.settings_dict['NAME']}")
        t = time.perf_counter()
        jobs = create_jobs(args.jobs, rng)
        n = insert_history(jobs, args.runs, rng, timezone.now())
        print(f"history    {len(jobs)} jobs, {n} runs inserted in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        counted = stats.rebuild()
        print(f"stats      rebuilt from {counted} runs in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        learned = sum(r["status"] == "updated" for r in baselines.recalculate())
        print(f"baselines  {learned} computed in {time.perf_counter() - t:.1f} s")
        rec = bench_recording(jobs, args.samples, rng)
        ms = [x * 1000 for x in rec["total"]]
        hook = [x * 1000 for x in rec["hook"]]
        print(f"recording  close_run + record_finished + hook, {len(ms)} runs: p50 {pct(ms, 50):.2f} ms, "
              f"p99 {pct(ms, 99):.2f} ms, max {max(ms):.2f} ms (target p99 < 20 ms)")
        fin = [x * 1000 for x in rec["record"]]
        print(f"           of which record_finished (job row, alerts, all hooks): p50 {pct(fin, 50):.2f} ms, "
              f"p99 {pct(fin, 99):.2f} ms")
        print(f"           of which the observability hook (stats, baseline, anomaly, breaker, health): "
              f"p50 {pct(hook, 50):.2f} ms, p99 {pct(hook, 99):.2f} ms, max {max(hook):.2f} ms")
        com = [x * 1000 for x in rec["commit"]]
        print(f"           of which the commit: p50 {pct(com, 50):.2f} ms, p99 {pct(com, 99):.2f} ms, "
              f"max {max(com):.2f} ms")
        for name, values in bench_queries(args.repeat).items():
            v = [x * 1000 for x in values]
            target = " (target < 200 ms)" if name != "metrics_render" else ""
            print(f"{name:18} {len(jobs)} jobs: median {statistics.median(v):.1f} ms, max {max(v):.1f} ms{target}")
    finally:
        if redis_proc is not None:
            redis_proc.stop()
        if args.keep:
            print(f"kept       {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
