"""Start precision: how late does a script really start against its planned second?

100 every-minute jobs spread over the three slots and many wait_seconds, ticked by the
real django-celery-beat scheduler, for --minutes minutes.  Each script records its own
start (date +%s.%N) next to its planned second (SMARTCRON_SCHEDULED_FOR), so the figure
includes everything: beat, tick, dispatch, admission, the hop to the slot worker, fork/exec.

    .venv/bin/python bench/bench_start_precision.py [--jobs 100] [--minutes 3]

Targets (issue 2): p99 < 50 ms, max < 250 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import percentile, prepare, start_beat  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to collect runs (default 3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the beat and worker logs here at the end")
    args = parser.parse_args()

    env = prepare()
    from jobs.beat_sync import sync_all
    from jobs.models import Job, JobRun
    from slots.models import ExecutionSlot
    from tests.helpers import Worker

    tmp = Path(env["BENCH_TMP"])
    stamps = tmp / "stamps"
    stamps.mkdir()
    scripts = Path(env["SMARTCRON_SCRIPT_ROOTS"])
    rng = random.Random(args.seed)
    slots = {s.name: s for s in ExecutionSlot.objects.all()}
    names = ["default", "heavy", "light"]
    for i in range(args.jobs):
        slot = names[i % 3]
        # Short jobs so that the slots have room: this measures timing, not queueing.
        duration = {"light": 0.2, "default": 1.0, "heavy": 0.5}[slot] * rng.uniform(0.5, 1.5)
        script = scripts / f"job{i}.sh"
        script.write_text(f"#!/bin/bash\necho \"$SMARTCRON_SCHEDULED_FOR $(date +%s.%N)\" >> {stamps}/job{i}\n"
                          f"sleep {duration:.2f}\n")
        script.chmod(0o755)
        # heavy allows 2 at once: give its jobs distinct seconds spaced by > duration.
        wait = (i * 7) % 60 if slot != "heavy" else (i // 3 * 2) % 60
        Job.objects.create(name=f"job{i}", script_path=str(script), schedule_type="cron", cron_expression="* * * * *",
                           wait_seconds=wait, slot=slots[slot], timeout_seconds=60, expected_duration_s=duration,
                           expected_memory_mb=5)
    sync_all()
    logdir = tmp / "logs"
    logdir.mkdir()
    workers = [Worker("dispatch", ["dispatch"], 8, env, logdir), Worker("default", ["default"], 5, env, logdir),
               Worker("heavy", ["heavy"], 2, env, logdir), Worker("light", ["light"], 10, env, logdir)]
    for w in workers:
        w.wait_ready()
    beat = start_beat(env, logdir)
    # Start counting at a full minute so every job gets the same number of ticks, after one
    # warm-up minute (steady state: that minute's ticks planned the first counted minute ahead).
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    end = start + dt.timedelta(minutes=args.minutes)
    print(f"{args.jobs} jobs, beat running; collecting runs planned in [{start:%H:%M:%S}, {end:%H:%M:%S}) UTC ...",
          flush=True)
    while dt.datetime.now(dt.UTC) < end + dt.timedelta(seconds=15):
        time.sleep(2)
    beat.terminate()
    for w in workers:
        w.stop()
    if args.keep_logs:
        import shutil

        shutil.copytree(logdir, args.keep_logs, dirs_exist_ok=True)

    lateness = []
    for f in stamps.iterdir():
        for line in f.read_text().split("\n"):
            if not line.strip():
                continue
            planned_s, actual_s = line.split()
            planned = dt.datetime.fromisoformat(planned_s)
            if start <= planned < end:
                lateness.append((float(actual_s) - planned.timestamp()) * 1000)
    expected = int(args.jobs * args.minutes)
    runs = JobRun.objects.filter(scheduled_for__gte=start, scheduled_for__lt=end)
    states: dict[str, int] = {}
    for state in runs.values_list("state", flat=True):
        states[state] = states.get(state, 0) + 1
    print(f"runs planned in the window: {runs.count()} (expected {expected}); states: {states}")
    print(f"script starts measured:     {len(lateness)}")
    if lateness:
        print(f"lateness ms: p50 {percentile(lateness, 0.5):.1f}  p90 {percentile(lateness, 0.9):.1f}  "
              f"p99 {percentile(lateness, 0.99):.1f}  max {max(lateness):.1f}  min {min(lateness):.1f}")
        worst = sorted(runs.select_related("job__slot"), key=lambda r: -(r.queue_wait_s or 0))[:5]
        print("latest runs (ms after the planned second: created / admitted / started; slot):")
        def ms(t: dt.datetime | None, planned: dt.datetime) -> str:
            return f"{(t - planned).total_seconds() * 1000:8.1f}" if t else "       -"

        for r in worst:
            print(f"  {r.job.name:8} {r.scheduled_for:%H:%M:%S}  {ms(r.created_at, r.scheduled_for)} "
                  f"{ms(r.admitted_at, r.scheduled_for)} {ms(r.started_at, r.scheduled_for)}  {r.job.slot.name}")
        print(f"targets: p99 < 50 ms -> {'MET' if percentile(lateness, 0.99) < 50 else 'MISSED'}; "
              f"max < 250 ms -> {'MET' if max(lateness) < 250 else 'MISSED'}")


if __name__ == "__main__":
    main()
