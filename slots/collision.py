"""Collision check for one job: the peak its start second creates, and a better second.

Used when an operator saves a job in the admin.  The other schedulable jobs (and the
cached peer schedule, if any) are simulated once; then every candidate second 0-59 of
this job is scored by the peak it would create over all its runs of the day: peak
concurrent runs in its slot first, then total memory.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from slots import planner


@dataclass
class Collision:
    wait_seconds: int
    peak_jobs: int  # in the job's slot, with the job at wait_seconds
    peak_memory_mb: float  # in total
    suggested_wait_seconds: int
    suggested_peak_jobs: int
    suggested_peak_memory_mb: float

    @property
    def improvable(self) -> bool:
        return (self.suggested_peak_jobs, round(self.suggested_peak_memory_mb)) < (
            self.peak_jobs, round(self.peak_memory_mb))

    def message(self, name: str) -> str:
        text = (f"{name} at second :{self.wait_seconds:02d} runs alongside at most {self.peak_jobs - 1} other job(s) "
                f"of its slot (peak {self.peak_jobs}); total memory peak {self.peak_memory_mb:.0f} MB.")
        if self.improvable:
            text += (f" Suggested second: :{self.suggested_wait_seconds:02d} (slot peak {self.suggested_peak_jobs}, "
                     f"memory peak {self.suggested_peak_memory_mb:.0f} MB).")
        return text


def _window_max(a: np.ndarray, width: int) -> np.ndarray:
    """max(a[t : t + width]) for every t, circular."""
    width = max(1, min(width, len(a)))
    ext = np.concatenate([a, a[: width - 1]])
    view = np.lib.stride_tricks.sliding_window_view(ext, width)
    return view.max(axis=1)


def check(job) -> Collision | None:
    """Collision figures for a saved Job (None for jobs that are not ticked)."""
    from discovery.peer import load_cache, peer_plan_jobs
    from slots.workload import database_workload

    all_jobs, _rows = database_workload()
    mine = [pj for pj in all_jobs if pj.name == job.name]
    if not mine:
        return None
    me = mine[0]
    others = [pj for pj in all_jobs if pj.name != job.name]
    cached = load_cache()
    peer = peer_plan_jobs(cached) if cached else []
    day = dt.datetime.now(dt.UTC).date()
    if others or peer:
        prof = planner.simulate(others, peer=peer, day=day)
        slot_jobs = prof.slots.get(me.slot, (np.zeros(planner.DAY_S), None))[0]
        total_mem = prof.memory
    else:
        slot_jobs = np.zeros(planner.DAY_S)
        total_mem = np.zeros(planner.DAY_S)
    ticks = (planner._cron_ticks(me.cron, me.tz, day) if me.cron else planner._interval_ticks(me.interval_s, day))
    width = max(1, int(round(me.duration_s)))
    jmax = _window_max(slot_jobs, width)
    mmax = _window_max(total_mem, width)
    scores = []
    for offset in range(60):
        idx = (ticks + offset) % planner.DAY_S
        scores.append((int(jmax[idx].max()) + 1 if len(idx) else 1,
                       float(mmax[idx].max()) + me.memory_mb if len(idx) else me.memory_mb))
    current = scores[me.wait_seconds]
    best = min(range(60), key=lambda o: (scores[o][0], round(scores[o][1]), abs(o - me.wait_seconds)))
    return Collision(me.wait_seconds, current[0], current[1], best, scores[best][0], scores[best][1])
