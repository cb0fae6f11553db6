"""Admission control under a mixed workload, through the real system.

A throwaway installation (own Redis, SQLite in a temp dir, real Celery workers: one
dispatch worker and one worker per slot with twice the slot's limit in threads, so the
leases, not the thread pools, hold the limits).  ``--jobs`` jobs of realistic shapes
(light: short and small; default: seconds, tens to hundreds of MB; heavy: long, up to
1.5 GB) tick on their own periods for ``--minutes``; each run is a Python script that
really allocates (and touches) about its expected peak and sleeps for its duration.
The reconciler runs every 5 s as beat would run it.

Printed per slot, against the limits (which must never be exceeded):
- peak concurrency: observed live (distinct runs whose processes are alive, sampled every
  0.2 s) and from the run rows (script start..end);
- peak memory: summed RSS of the slot's live processes (sampled) and the summed expected
  peaks of the runs holding a lease at once (what admission budgets);
- utilisation loss: of all the time runs spent waiting for admission, the share during
  which the waiting run would have fitted (count, memory, CPU) but was not admitted yet:
  the system's reaction time, to keep low;
- admission decision latency p50/p99 (duration of one admit() call, measured by the
  start task), and queue wait p50/p99 (admitted minus planned).

    .venv/bin/python bench/bench_admission.py [--jobs 200 --minutes 3 --seed 1]
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import random
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import percentile, prepare  # noqa: E402

SCRIPT = """#!/usr/bin/env python3
import sys, time
mb, seconds = float(sys.argv[1]), float(sys.argv[2])
block = bytearray(int(mb * 1024 * 1024))
block[::4096] = b"x" * len(block[::4096])
time.sleep(seconds)
"""

# name, limit, budget MB, cpu %, share of jobs, period choices (s), duration range (s), expected MB range
SLOTS = [
    ("light", 10, 1024, 50, 0.40, (30, 60), (0.2, 2.0), (20, 60)),
    ("default", 5, 3072, 80, 0.45, (60, 90, 120, 180), (1.0, 6.0), (50, 700)),
    ("heavy", 2, 4096, 90, 0.15, (120, 180, 240), (3.0, 10.0), (300, 1500)),
]
PYTHON_BASE_MB = 12.0  # RSS of an idle python3 before it allocates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the arrival window plus drain")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    env = prepare(SMARTCRON_HEARTBEAT_SECONDS="2", SMARTCRON_LEASE_TTL_SECONDS="6",
                  SMARTCRON_SAMPLE_INTERVAL="0.1", SMARTCRON_KILL_GRACE_SECONDS="1")
    from django.conf import settings
    from django.utils import timezone

    from jobs.models import FINAL_STATES, Job, JobRun
    from jobs.reconcile import reconcile_once
    from jobs.services import create_run, dispatch
    from slots import procs
    from slots.admission import cpu_claim, latencies_ms
    from slots.leases import LeaseStore
    from slots.models import ExecutionSlot
    from smartcron_project.celery import app
    from tests.helpers import Worker

    app.conf.broker_url = env["REDIS_URL"]
    settings.HEARTBEAT_SECONDS, settings.LEASE_TTL_SECONDS = 2.0, 6.0
    tmp = Path(env["BENCH_TMP"])
    logdir = tmp / "logs"
    logdir.mkdir()
    script = Path(env["SMARTCRON_SCRIPT_ROOTS"]) / "work.py"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    rng = random.Random(args.seed)

    ExecutionSlot.objects.all().delete()
    slots = {}
    for name, limit, budget, cpu, *_ in SLOTS:
        slots[name] = ExecutionSlot.objects.create(name=name, max_concurrent=limit, memory_budget_mb=budget,
                                                   cpu_percent=cpu)
    shapes = {}
    for i in range(args.jobs):
        r = rng.random()
        acc = 0.0
        for spec in SLOTS:
            acc += spec[4]
            if r <= acc:
                break
        name, _, _, _, _, periods, (d0, d1), (m0, m1) = spec
        duration = round(rng.uniform(d0, d1), 2)
        expected = round(rng.uniform(m0, m1))
        job = Job.objects.create(
            name=f"{name}-{i:03d}", script_path=str(script), interpreter="python", schedule_type="manual",
            slot=slots[name], priority=rng.choice(["critical", "high", "medium", "medium", "low", "low"]),
            expected_memory_mb=expected, expected_duration_s=duration, cpu_weight=rng.choice([0.5, 1.0, 1.0, 1.5]),
            overlap_policy="queue", timeout_seconds=120, start_window_seconds=600,
            args=f"{max(1.0, expected * 0.85 - PYTHON_BASE_MB):.0f} {duration}")
        shapes[job.pk] = (job, rng.choice(periods), rng.uniform(0, 60))

    workers = [Worker("dispatch", ["dispatch"], 8, env, logdir)]
    workers += [Worker(s.name, [s.name], 2 * s.max_concurrent, env, logdir) for s in slots.values()]
    for w in workers:
        w.wait_ready()

    # Live sampling of the scripts' processes: concurrency and summed RSS per slot.
    import psutil

    install = procs.install_id()
    run_slot: dict[int, str] = {}
    live_peak = defaultdict(int)
    rss_peak = defaultdict(float)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            per_slot_runs = defaultdict(set)
            per_slot_rss = defaultdict(float)
            for t in procs.tagged_processes(install):
                slot = run_slot.get(t.run_id)
                if slot is None:
                    continue
                try:
                    per_slot_rss[slot] += psutil.Process(t.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                per_slot_runs[slot].add(t.run_id)
            for slot, ids in per_slot_runs.items():
                live_peak[slot] = max(live_peak[slot], len(ids))
                rss_peak[slot] = max(rss_peak[slot], per_slot_rss[slot])
            time.sleep(0.2)

    # The ticks: every job on its own period from its own offset, like beat would.
    window = max(30.0, args.minutes * 60 - 45)
    t0 = timezone.now() + dt.timedelta(seconds=2)
    ticks = []
    for job, period, offset in shapes.values():
        t = offset
        while t < window:
            ticks.append((t0 + dt.timedelta(seconds=t), job))
            t += period
    ticks.sort(key=lambda x: x[0])
    print(f"{args.jobs} jobs, {len(ticks)} runs over {window:.0f} s, slots: "
          + ", ".join(f"{s.name} {s.max_concurrent} jobs/{s.memory_budget_mb} MB" for s in slots.values()), flush=True)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run_ids: list[int] = []
    last_reconcile = time.monotonic()
    i = 0
    started = time.monotonic()
    deadline = started + args.minutes * 60 + 30
    while time.monotonic() < deadline:
        now = timezone.now()
        # Dispatch a few seconds ahead: the start task fires at its planned second (ETA).
        while i < len(ticks) and ticks[i][0] <= now + dt.timedelta(seconds=5):
            planned, job = ticks[i]
            run, created = create_run(job, planned)
            if created:
                run_slot[run.pk] = job.slot.name
                run_ids.append(run.pk)
                dispatch(run)
            i += 1
        if time.monotonic() - last_reconcile > 5:
            reconcile_once()
            last_reconcile = time.monotonic()
        if i >= len(ticks) and not JobRun.objects.filter(pk__in=run_ids).exclude(state__in=FINAL_STATES).exists():
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join(5)
    for w in workers:
        w.stop()

    runs = list(JobRun.objects.filter(pk__in=run_ids).select_related("job", "job__slot"))
    states = defaultdict(int)
    for r in runs:
        states[r.state] += 1
    print(f"finished in {elapsed:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    unfinished = [r for r in runs if r.state not in FINAL_STATES]
    store = LeaseStore()
    held = {s: len(store.usage(s).holders) for s in slots}
    print(f"runs not in a final state: {len(unfinished)}; leases still held: {held}")

    lat = latencies_ms()
    waits = [r.queue_wait_s for r in runs if r.queue_wait_s is not None]
    print(f"admission decision latency: p50 {percentile(lat, 0.5):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms "
          f"({len(lat)} decisions)")
    print(f"queue wait (script start - planned second): p50 {percentile(waits, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(waits, 0.99):.2f} s")
    print(f"{'slot':8} {'limit':>5} {'live':>5} {'rows':>5} {'budget MB':>9} {'expected':>9} {'RSS MB':>8} "
          f"{'runs':>5} {'waiting s':>9} {'fit s':>7} {'share':>6}")
    ok = not unfinished and not any(held.values())
    all_reactions: list[float] = []
    for name, slot in slots.items():
        mine = [r for r in runs if r.job.slot_id == slot.pk and r.started_at and r.finished_at]
        spans = [(r.started_at.timestamp(), r.finished_at.timestamp()) for r in mine]
        rows_peak = _max_overlap(spans)
        leases = [(r.admitted_at.timestamp(), r.finished_at.timestamp(), r.expected_memory_mb or 0.0,
                   cpu_claim(r.job, slot)) for r in mine if r.admitted_at]
        expected_peak = _max_sum(leases)
        waited, lost, reactions = _utilisation_loss(mine, slot, cpu_claim, settings.DISPATCH_LEAD_MS / 1000)
        all_reactions += reactions
        share = lost / waited if waited else 0.0
        print(f"{name:8} {slot.max_concurrent:>5} {live_peak[name]:>5} {rows_peak:>5} {slot.memory_budget_mb:>9} "
              f"{expected_peak:>9.0f} {rss_peak[name]:>8.0f} {len(mine):>5} {waited:>9.1f} {lost:>7.1f} "
              f"{share:>6.1%}")
        if max(live_peak[name], rows_peak) > slot.max_concurrent or expected_peak > slot.memory_budget_mb + 1e-6:
            ok = False
            print(f"  LIMIT EXCEEDED in slot {name}")
        if rss_peak[name] > slot.memory_budget_mb:
            print(f"  note: measured RSS above the budget in slot {name} (expected peaks were too low)")
    print(f"reaction (a waiting run fitted -> admitted): p50 {percentile(all_reactions, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(all_reactions, 0.99) * 1000:.0f} ms over {len(all_reactions)} runs")
    print("live/rows: peak concurrency sampled live / from the run rows; expected: peak summed expected peaks "
          "of lease holders; RSS: peak summed RSS sampled live; waiting: slot time during which some run waited "
          "for admission; fit: part of it during which a waiting run would have fitted (reaction time); "
          "share = fit/waiting")
    print("OK: limits held" if ok else "FAILED")
    sys.exit(0 if ok else 1)


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _max_sum(leases: list[tuple[float, float, float, float]]) -> float:
    events = sorted([(a, m) for a, _, m, _ in leases] + [(b, -m) for _, b, m, _ in leases], key=lambda x: (x[0], x[1]))
    best = cur = 0.0
    for _, m in events:
        cur += m
        best = max(best, cur)
    return best


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _utilisation_loss(runs, slot, cpu_claim, lead: float) -> tuple[float, float, list[float]]:
    """(slot time during which some run waited for admission, of it the time some waiting run would have fitted).

    Occupancy is the lease intervals (admitted..finished) as piecewise-constant segments;
    a waiting run "fits" in a segment when the slot has a free place, its expected peak
    and CPU claim fit the budgets, and no run of the same job holds a lease (overlap).
    Both figures are unions over the slot's timeline, so ten runs waiting through the
    same 0.1 s gap count 0.1 s, not 1 s.  Also returns, for each run that waited, how long
    it had been fitting when it was finally admitted (the reaction time to a freed place).
    """
    leases = [(r.admitted_at.timestamp(), r.finished_at.timestamp(), r) for r in runs if r.admitted_at]
    cuts = sorted({a for a, _, _ in leases} | {b for _, b, _ in leases})
    segments = []  # (start, end, count, memory, cpu, job ids)
    for a, b in zip(cuts, cuts[1:], strict=False):
        holding = [r for x, y, r in leases if x <= a and b <= y]
        segments.append((a, b, len(holding), sum(r.expected_memory_mb or 0.0 for r in holding),
                         sum(cpu_claim(r.job, slot) for r in holding), {r.job_id for r in holding}))
    starts = [seg[0] for seg in segments]
    waiting: list[tuple[float, float]] = []
    fitting: list[tuple[float, float]] = []
    reactions: list[float] = []
    for r in runs:
        if not r.admitted_at:
            continue
        eligible = r.scheduled_for.timestamp() - lead
        end = r.admitted_at.timestamp()
        if end <= eligible:
            continue
        waiting.append((eligible, end))
        mine: list[tuple[float, float]] = []
        need_mem = r.expected_memory_mb or 0.0
        need_cpu = cpu_claim(r.job, slot)
        covered = eligible
        for a, b, count, mem, cpu, jobs in segments[max(0, bisect.bisect_right(starts, eligible) - 1):]:
            if a >= end:
                break
            lo, hi = max(a, eligible), min(b, end)
            if hi <= lo:
                continue
            if lo > covered:
                mine.append((covered, lo))  # nothing held at all in between: it fitted
            covered = hi
            if r.job_id not in jobs and count < slot.max_concurrent and (
                    count == 0 or (mem + need_mem <= slot.memory_budget_mb
                                   and cpu + need_cpu <= slot.cpu_percent + 1e-6)):
                mine.append((lo, hi))
        if end > covered:
            mine.append((covered, end))
        fitting += mine
        # The stretch of fitting that ended with the admission.
        start = end
        for a, b in sorted(mine, reverse=True):
            if b < start - 1e-6:
                break
            start = min(start, a)
        reactions.append(end - start)
    return _union(waiting), _union(fitting), reactions


if __name__ == "__main__":
    main()
