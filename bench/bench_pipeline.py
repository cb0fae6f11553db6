"""Pipeline cost: runs per second of /bin/true through the whole tracked pipeline
(JobRun row, start task on "dispatch", admission with a Redis lease, execute on a slot
queue, process-tree sampling, fenced state changes, run-finished bookkeeping) versus plain
Celery tasks that run the same subprocess, measured in the same run on the same machine
with the same worker pool (threads, same concurrency).

    .venv/bin/python bench/bench_pipeline.py [--runs 1000] [--concurrency 8] [--places N]

Target (issue 2): ratio >= 0.8.  Also printed: plain tasks making the same two hops as a
tracked run (dispatch queue, then slot queue) with nothing else, the ceiling of any design
with a dispatch step.  ``--places 1000`` gives the slot room for every run at once, so
nothing waits in line (the pipeline's cost without the waiting machinery).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="threads of every worker (and the slot's places)")
    parser.add_argument("--places", type=int, default=None,
                        help="the slot's places (default: --concurrency). A value >= --runs admits every run at "
                             "its first attempt (no line, no wake-ups): the pipeline without the waiting machinery")
    parser.add_argument("--rounds", type=int, default=2, help="alternate plain/tracked this many times")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the workers' logs here at the end")
    args = parser.parse_args()
    env = prepare()
    from django.utils import timezone

    from bench.plain_tasks import plain_hop, plain_true
    from jobs.models import FINAL_STATES, Job, JobRun
    from jobs.services import dispatch
    from slots.models import ExecutionSlot
    from slots.redis_client import get_redis
    from smartcron_project.celery import app
    from tests.helpers import Worker

    app.conf.broker_url = env["REDIS_URL"]
    tmp = Path(env["BENCH_TMP"])
    logdir = tmp / "logs"
    logdir.mkdir()
    script = Path(env["SMARTCRON_SCRIPT_ROOTS"]) / "true.sh"
    script.write_text("")
    slot = ExecutionSlot.objects.create(name="bench", max_concurrent=args.places or args.concurrency,
                                        memory_budget_mb=10**6,
                                        cpu_percent=100)
    jobs = [Job.objects.create(name=f"true{i}", script_path="/bin/true", interpreter="executable",
                               schedule_type="manual", slot=slot, overlap_policy="allow", max_instances=1000,
                               expected_memory_mb=1, cpu_weight=0.1)
            for i in range(10)]
    # /bin/true lives outside the script root: allow it for this benchmark only.
    bench_env = {**env, "SMARTCRON_SCRIPT_ROOTS": f"{env['SMARTCRON_SCRIPT_ROOTS']},/bin,/usr/bin"}
    from django.conf import settings

    settings.SCRIPT_ROOTS = bench_env["SMARTCRON_SCRIPT_ROOTS"].split(",")
    # Every worker logs at the same level (per-task INFO lines cost the tracked path twice).
    plain_env = {**bench_env, "CELERY_IMPORTS": "bench.plain_tasks"}
    workers = [
        Worker("dispatch", ["dispatch"], 8, bench_env, logdir, loglevel="warning"),
        Worker("slot", ["bench"], args.concurrency, bench_env, logdir, loglevel="warning"),
        Worker("plain", ["bench-plain"], args.concurrency, plain_env, logdir, loglevel="warning",
               imports=("bench.plain_tasks",)),
        Worker("plainhop", ["bench-hop"], 8, plain_env, logdir, loglevel="warning", imports=("bench.plain_tasks",)),
    ]
    for w in workers:
        w.wait_ready()
    time.sleep(3)
    r = get_redis()

    def plain_round(n: int, hop: bool = False) -> float:
        key = f"bench:plain:{time.monotonic_ns()}"
        t0 = time.perf_counter()
        for _ in range(n):
            if hop:
                plain_hop.apply_async((key, "bench-plain"), queue="bench-hop")
            else:
                plain_true.apply_async((key,), queue="bench-plain")
        while int(r.get(key) or 0) < n:
            time.sleep(0.01)
        return n / (time.perf_counter() - t0)

    def phases(ids: list[int]) -> None:
        """Where a tracked run's time goes (ms, p50 / p95 over the round)."""
        import numpy as np

        rows = list(JobRun.objects.filter(pk__in=ids).values_list(
            "created_at", "queued_at", "admitted_at", "started_at", "finished_at"))
        attempts = r.llen("smartcron:admission:latency_ms")
        r.delete("smartcron:admission:latency_ms")
        out = []
        for label, a, b in (("created->queued", 0, 1), ("queued->admitted", 1, 2), ("admitted->started", 2, 3),
                            ("started->finished", 3, 4)):
            ms = [(row[b] - row[a]).total_seconds() * 1000 for row in rows if row[a] and row[b]]
            if ms:
                out.append(f"{label} {np.percentile(ms, 50):.0f}/{np.percentile(ms, 95):.0f}")
        print(f"  phases ms p50/p95: {', '.join(out)}; admission attempts {attempts} for {len(rows)} runs",
              flush=True)

    def tracked_round(n: int) -> float:
        base = timezone.now() - dt.timedelta(seconds=1)
        runs = JobRun.objects.bulk_create(
            [JobRun(job=jobs[i % len(jobs)], scheduled_for=base + dt.timedelta(microseconds=i), trigger="manual",
                    slot_name="bench") for i in range(n)])
        ids = [run.pk for run in runs] if runs[0].pk else list(
            JobRun.objects.filter(scheduled_for__gte=base).values_list("pk", flat=True))
        print(f"  tracked round: dispatching {n} runs", flush=True)
        t0 = time.perf_counter()
        for run in JobRun.objects.filter(pk__in=ids):
            dispatch(run)
        while JobRun.objects.filter(pk__in=ids).exclude(state__in=FINAL_STATES).exists():
            time.sleep(0.02)
        rate = n / (time.perf_counter() - t0)
        phases(ids)
        bad = JobRun.objects.filter(pk__in=ids).exclude(state="succeeded").count()
        if bad:
            print(f"  warning: {bad} tracked runs did not succeed")
        JobRun.objects.filter(pk__in=ids).delete()
        return rate

    plain_round(50)  # warm up every path
    plain_round(50, hop=True)
    tracked_round(50)
    plain_rates, hop_rates, tracked_rates = [], [], []
    for i in range(args.rounds):
        plain_rates.append(plain_round(args.runs))
        hop_rates.append(plain_round(args.runs, hop=True))
        tracked_rates.append(tracked_round(args.runs))
        print(f"round {i + 1}: plain {plain_rates[-1]:.0f} runs/s, plain two-hop {hop_rates[-1]:.0f} runs/s, "
              f"tracked {tracked_rates[-1]:.0f} runs/s", flush=True)
    for w in workers:
        w.stop()
    if args.keep_logs:
        import shutil

        shutil.copytree(logdir, args.keep_logs, dirs_exist_ok=True)
    plain = max(plain_rates)
    hop = max(hop_rates)
    tracked = max(tracked_rates)
    print(f"plain Celery + subprocess: {plain:.0f} runs/s (best of {args.rounds} x {args.runs})")
    print(f"plain, two hops (no tracking, the floor of any design with a dispatch queue): {hop:.0f} runs/s, "
          f"ratio {hop / plain:.2f}")
    print(f"tracked Smart Cron run:    {tracked:.0f} runs/s (best of {args.rounds} x {args.runs})")
    print(f"ratio tracked/plain: {tracked / plain:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
