"""Benchmark of the load planner (slots/planner.py) on synthetic workloads.

Run from the repository root:

    .venv/bin/python bench/bench_optimizer.py [--sizes 50,300,10000] [--seed N] [--samples N] [--tune JSON]

For each size it builds a workload the way people write crontabs (mostly at minute 0:
hourly, */5, */15, every minute, daily at 02:00 and 04:00, every 4 hours, a few
intervals), lognormal durations clipped to 1-300 s, memory 50 MB-2 GB, a few pinned
jobs, three slots, and a peer server with a tenth as many jobs.  It prints, as peak over
lower bound for runs and memory:

* the lower bound (energetic + Lagrangian, see docs/planning.md) and, for comparison,
  the energetic bound alone;
* all-at-:00 (every job at second 0), hash spreading (Jenkins-style H: a hash of the
  name modulo the window), random jitter, and ours, plus our run time (CPU time counts
  with phase 5 on, the first call's import of OR-Tools' CP-SAT module, about 0.1 s);
* under duration variation (each run's duration drawn lognormal with median p95/1.6,
  see planner.sample_variation): blind hash spreading, a plan made on median durations,
  ours (made on p95) and ours with the survival load model (``load_model="survival"``,
  opt-in: it flattens each run's survival curve instead of its p95 box), each against
  the bound of the same sampled durations.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slots import planner  # noqa: E402
from slots.planner import P95_OVER_MEDIAN, PlanJob  # noqa: E402

DAY = dt.date(2025, 1, 15)  # fixed reference day: results do not depend on today's date
# (schedule, share, period in seconds): as people write them, mostly at minute 0.
MIX = [
    ("0 * * * *", 0.28, 3600),
    ("*/5 * * * *", 0.14, 300),
    ("*/15 * * * *", 0.12, 900),
    ("0 2 * * *", 0.10, 86400),
    ("0 4 * * *", 0.08, 86400),
    ("* * * * *", 0.06, 60),
    ("0 */4 * * *", 0.05, 14400),
    ("30 * * * *", 0.03, 3600),
    ("interval:30", 0.03, 30),
    ("interval:120", 0.04, 120),
    ("interval:600", 0.04, 600),
    ("interval:3600", 0.03, 3600),
]
SLOTS = (("default", 0.6), ("light", 0.25), ("heavy", 0.15))


def workload(n: int, seed: int, *, prefix: str = "job", pinned_share: float = 0.03) -> list[PlanJob]:
    """n synthetic jobs (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    shares = np.array([m[1] for m in MIX])
    kinds = rng.choice(len(MIX), size=n, p=shares / shares.sum())
    durations = np.clip(rng.lognormal(np.log(20), 1.1, n), 1, 300)
    memory = np.clip(rng.lognormal(np.log(200), 0.9, n), 50, 2048)
    slot_names = [s for s, _ in SLOTS]
    slot_p = np.array([p for _, p in SLOTS])
    slots = rng.choice(len(SLOTS), size=n, p=slot_p)
    pinned = rng.random(n) < pinned_share
    jobs = []
    for i in range(n):
        spec, _, period = MIX[kinds[i]]
        # A job does not run longer than 80 % of its own period (it would overlap itself).
        dur = float(round(min(durations[i], 0.8 * period), 1))
        common = dict(name=f"{prefix}-{i:05d}", duration_s=max(dur, 1.0), memory_mb=float(round(memory[i])),
                      slot=slot_names[slots[i]], pinned=bool(pinned[i]),
                      wait_seconds=int(rng.integers(0, 60)) if pinned[i] else 0)
        if spec.startswith("interval:"):
            interval = int(spec.split(":")[1])
            common["wait_seconds"] = common["wait_seconds"] % min(interval, 60)
            jobs.append(PlanJob(interval_s=interval, window_s=60, **common))
        else:
            jobs.append(PlanJob(cron=spec, window_s=60, **common))
    return jobs


def peer_workload(n: int, seed: int) -> list[PlanJob]:
    """A peer server's jobs: same mix, spread by hash (they are fixed for us)."""
    peer = workload(max(1, n // 10), seed + 7919, prefix="peer", pinned_share=0.0)
    return [replace(j, wait_seconds=hash_offset(j), pinned=True) for j in peer]


def hash_offset(job: PlanJob) -> int:
    """Jenkins-style H: a stable hash of the name, modulo the job's window."""
    window = min(job.window_s, job.interval_s or job.window_s, 60)
    return zlib.crc32(job.name.encode()) % window


def strategy_offsets(jobs: list[PlanJob], how: str, rng: np.random.Generator) -> list[int]:
    out = []
    for j in jobs:
        window = min(j.window_s, j.interval_s or j.window_s, 60)
        if j.pinned:
            out.append(j.wait_seconds % (j.interval_s or 10**9))
        elif how == "zero":
            out.append(0)
        elif how == "hash":
            out.append(hash_offset(j))
        else:
            out.append(int(rng.integers(0, window)))
    return out


def fmt_ratio(r: tuple[float, float]) -> str:
    return f"{r[0]:5.2f} / {r[1]:5.2f}"


def run(size: int, seed: int, samples: int, tune: dict | None = None) -> dict:
    jobs = workload(size, seed)
    peer = peer_workload(size, seed)
    bound = planner.lower_bound(jobs, peer, day=DAY)
    energetic = planner.lower_bound(jobs, peer, day=DAY, lagrangian_s=0.0)  # for comparison only
    rng = np.random.default_rng(seed + 1)

    def ratios(offsets: list[int]) -> tuple[float, float]:
        prof = planner.simulate(jobs, offsets, peer=peer, day=DAY)
        return prof.peak_jobs / bound.peak_jobs, prof.peak_memory_mb / bound.peak_memory_mb

    rows = {}
    for label, how in (("all at :00", "zero"), ("hash H(name) mod 60", "hash"), ("random jitter", "random")):
        rows[label] = ratios(strategy_offsets(jobs, how, rng))
    t0, c0 = time.perf_counter(), time.process_time()
    plan = planner.optimize(jobs, peer, day=DAY, tune=tune)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows["ours (p95 plan)"] = plan.ratio(plan.after)
    check = ratios(plan.offsets)
    assert abs(check[0] - rows["ours (p95 plan)"][0]) < 1e-9, "re-simulation disagrees"

    # The survival load model (opt-in): flattens expected load instead of p95 boxes.
    c1 = time.process_time()
    survival_plan = planner.optimize(jobs, peer, day=DAY, load_model="survival")
    survival_cpu = time.process_time() - c1
    rows["ours, survival model"] = survival_plan.ratio(survival_plan.after)

    # Plan made on medians: same jobs with duration / 1.6.
    medians = [replace(j, duration_s=j.duration_s / P95_OVER_MEDIAN) for j in jobs]
    peer_medians = [replace(j, duration_s=j.duration_s / P95_OVER_MEDIAN) for j in peer]
    median_plan = planner.optimize(medians, peer_medians, day=DAY)

    variation = {}
    bounds = None
    for label, offsets in (("blind (hash) spreading", strategy_offsets(jobs, "hash", rng)),
                           ("plan on medians", median_plan.offsets),
                           ("ours (plan on p95)", plan.offsets),
                           ("ours, survival model", survival_plan.offsets)):
        var = planner.sample_variation(jobs, peer, offsets, np.random.default_rng(seed + 99), samples,
                                       day=DAY, bounds=bounds)
        bounds = list(zip(var.bound_jobs, var.bound_memory_mb, strict=True))
        variation[label] = (var.ratio_jobs, var.ratio_memory)
    return {"size": size, "bound": bound, "energetic": energetic, "rows": rows, "elapsed": elapsed, "cpu": cpu,
            "plan": plan, "variation": variation, "survival_cpu": survival_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,300,10000", help="Comma-separated job counts (default 50,300,10000).")
    parser.add_argument("--seed", type=int, default=1, help="Random seed of the workloads (default 1).")
    parser.add_argument("--samples", type=int, default=3, help="Duration-variation samples per plan (default 3).")
    parser.add_argument("--tune", type=json.loads, default=None,
                        help='JSON passed to planner.optimize(tune=...) for our plan, '
                             'e.g. \'{"exact": true}\' (the CP-SAT phase, off by default).')
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"Load planner benchmark (seed {args.seed}, {args.samples} variation samples; "
          "figures are peak / lower bound, runs / memory)\n")
    for size in sizes:
        t0 = time.perf_counter()
        res = run(size, args.seed, args.samples, args.tune)
        b = res["bound"]
        plan = res["plan"]
        e = res["energetic"]
        print(f"== {size} jobs (+ {max(1, size // 10)} peer jobs): lower bound {b.peak_jobs:.0f} runs, "
              f"{b.peak_memory_mb:,.0f} MB (energetic bound alone: {e.peak_jobs:.0f} runs, "
              f"{e.peak_memory_mb:,.0f} MB)")
        print(f"   {'strategy':<28} {'runs / memory':>15}")
        for label, r in res["rows"].items():
            print(f"   {label:<28} {fmt_ratio(r):>15}")
        print(f"   our run time: {res['elapsed']:.2f} s wall, {res['cpu']:.2f} s CPU ({plan.stats['passes']} passes, "
              f"{plan.stats['rr_rounds']} ruin-and-recreate rounds, {plan.stats['ils_rounds']} search rounds, "
              f"CP-SAT polishing {plan.stats['exact']}: {plan.stats.get('exact_rounds', 0)} rounds, "
              f"{plan.stats.get('exact_improved', 0)} kept), {len(plan.moves)} jobs moved")
        print(f"   survival model run time: {res['survival_cpu']:.2f} s CPU")
        worst_slot = max((max(plan.after.peaks().slots[s][0] / v[0], plan.after.peaks().slots[s][1] / v[1])
                          for s, v in b.slots.items()), default=1.0)
        print(f"   ours, worst slot peak / its bound: {worst_slot:.3f}")
        print("   under duration variation (mean over samples of peak / bound of the sampled durations):")
        for label, r in res["variation"].items():
            print(f"   {label:<28} {fmt_ratio(r):>15}")
        print(f"   (size done in {time.perf_counter() - t0:.1f} s)\n")


if __name__ == "__main__":
    main()
