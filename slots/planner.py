"""Load planner: pick each job's start second so that the load peaks are as low as possible.

Pure logic (numpy, croniter through :mod:`jobs.schedule`); no Django import, so the
management command, the API and the benchmark can all use it.

Load model
----------
A job fires on its schedule's *ticks* (cron minutes evaluated in its timezone, or the
epoch-aligned grid ``k * interval`` of an interval job) and starts ``offset`` seconds
after each tick; today ``offset`` is ``wait_seconds`` (0-59).  An unpinned job may be
moved to any offset in ``[0, window_s)``; a pinned job (and every peer job) stays where
it is.  A run occupies the whole seconds ``[start, start + ceil(duration))`` and holds
``memory_mb`` all that time.  One cycle is 24 h at 1 s resolution (86,400 seconds,
circular: a run that crosses midnight continues at second 0).  Day-of-month, month and
day-of-week fields are ignored: a job that only runs on some days is counted every day,
so the figures are those of the busiest day.  A timezone is reduced to its UTC offset
on the reference day; an interval that does not divide 24 h drifts from one day to the
next and is taken as it falls on the reference day.

Four loads are tracked for every second: concurrent runs and concurrent memory, in total
(ours + peer) and per slot (ours only; peer servers have their own slots).

Objective
---------
Every peak is normalised by its own lower bound (see :func:`lower_bound`), which makes
runs and megabytes comparable.  ``objective="balanced"`` (the default) minimises the
largest normalised peak over all of them (total and per slot, runs and memory), then the
next largest and so on (leximax), then the number of seconds at the largest peak, then
the sum of the normalised peaks; ``"memory"`` puts
the memory peaks first and the run peaks second (``"jobs"`` the other way round).

While searching, the planner also uses a smooth stand-in for "the largest normalised
peak": the soft peak ``sum over seconds and loads of exp(beta * (load / bound - 1))``.
Unlike a plain maximum it still tells offsets apart when all of them touch the peak
(a long run starting early or late in its minute), and its folds update exactly.

Algorithm
---------
1. Greedy placement, largest job first (duration x (1/bound_runs + memory/bound_MB)),
   each at the offset that raises the soft peak least over all its runs.
2. Passes over all movable jobs: lift one, re-place it (soft peak, sharpening ``beta``
   from pass to pass).
3. Ruin and recreate around the worst second of the worst load: lift every job with a
   run near it, put them back largest first on the exact normalised peak, keep the
   result only if the plan improved (else widen the region, then try the next peak).
4. While CPU time is left (inputs up to 2,000 jobs): randomised ruin and recreate of a
   few jobs at a busiest second of a heavily loaded load, kept when no worse.
5. Exact polishing (inputs up to 2,000 jobs, when OR-Tools is installed): CP-SAT solves
   the neighbourhood of up to 60 jobs running near a busiest second of the totals, the
   rest fixed, on the minutes around the peaks (see :func:`_exact_polish`); kept when
   the objective improves.

With ``load_model="survival"`` (opt-in) phases 1-4 place each run's survival curve (the
chance it still runs k seconds after its start, from the duration-variation model) plus a
variance margin instead of a p95 box: the plan then flattens the load that really
happens when durations vary, at the price of higher p95-box peaks.

Speed comes from periodicity: a job whose ticks repeat every ``p`` seconds (``*/5`` ->
300 s) is evaluated on the load folded by ``p`` (the ``86400/p`` copies of each residue
summed for the soft peak, maxed for the exact one), which turns 288 windows into one.
Jobs are processed grouped by period, so the folds of the current period are updated in
O(p) (or only at the touched residues) per placement and rebuilt only when the period
changes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from pathlib import Path

import numpy as np

from jobs.schedule import normalize_cron, validate_timezone

DAY_S = 86400
DEFAULT_WINDOW_S = 60
MAX_WINDOW_S = 3600
OBJECTIVES = ("balanced", "memory", "jobs")
# What a run's load looks like to the search: a p95 box, or its survival curve.
LOAD_MODELS = ("p95", "survival")
# Durations are planned at their p95.  The variation model draws each run's duration from
# a lognormal whose median is p95 / 1.6, so that the given duration is its 95th percentile:
# exp(1.645 * sigma) = 1.6.
P95_OVER_MEDIAN = 1.6
LOGNORMAL_SIGMA = math.log(P95_OVER_MEDIAN) / 1.6448536269514722
MEAN_OVER_P95 = math.exp(LOGNORMAL_SIGMA ** 2 / 2) / P95_OVER_MEDIAN  # mean duration / p95
SURVIVAL_CUTOFF = 1e-3  # a survival curve ends where fewer than 1 run in 1,000 is still running
SURVIVAL_RISK = 1.0  # survival model: plan the peak of mean + SURVIVAL_RISK standard deviations
SLOT_SLACK = 1.25  # a slot's peak is normalised by 1.25 x its bound (the totals come first)
# Interval lengths (seconds) tried by the energetic lower bound; any set gives a valid
# bound, a richer one a tighter bound.
# CPU seconds spent raising the energetic bounds with Lagrangian bounds (see _bounds).
LAGRANGIAN_S = 1.0
SAMPLE_LAGRANGIAN_S = 0.3  # the same, per duration-variation sample
# CPU seconds (counted from the start of the call) at which the search of inputs up to
# EXACT_MAX_JOBS jobs stops; with OR-Tools installed the randomised search stops at
# ILS_WITH_EXACT_S and the exact polishing phase (CP-SAT) has the rest.
SEARCH_TOTAL_S = 1.4
ILS_WITH_EXACT_S = 0.7
EXACT_MAX_JOBS = 2000
EXACT_ROOM_S = 0.3  # CPU seconds phase 5 needs at least, else it is skipped ("no time")
_EXP_CAP = 300.0  # exp() argument cap: keeps the soft-peak terms finite
BOUND_LENGTHS = (1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 75, 90, 120, 150, 180, 240, 300, 420, 600, 900, 1800, 3600)


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanJob:
    """One job as the planner sees it (ours or a peer's)."""

    name: str
    cron: str | None = None
    interval_s: int | None = None
    tz: str = "UTC"
    wait_seconds: int = 0
    window_s: int = DEFAULT_WINDOW_S
    duration_s: float = 60.0
    memory_mb: float = 0.0
    slot: str = "default"
    pinned: bool = False

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError(f"job {self.name!r}: give exactly one of cron and interval_s")


@dataclass
class LoadProfile:
    """Concurrent runs and memory for every second of the cycle."""

    cycle_s: int
    jobs: np.ndarray  # (cycle_s,) int: concurrent runs in total
    memory: np.ndarray  # (cycle_s,) float: concurrent memory (MB) in total
    slots: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def peak_jobs(self) -> int:
        return int(self.jobs.max()) if self.jobs.size else 0

    @property
    def peak_memory_mb(self) -> float:
        return float(self.memory.max()) if self.memory.size else 0.0

    def peaks(self) -> Peaks:
        return Peaks(self.peak_jobs, self.peak_memory_mb,
                     {s: (int(j.max()), float(m.max())) for s, (j, m) in self.slots.items()})


@dataclass
class Peaks:
    """Peak runs and peak memory, in total and per slot (also used for lower bounds)."""

    peak_jobs: float
    peak_memory_mb: float
    slots: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "peak_jobs": self.peak_jobs,
            "peak_memory_mb": round(self.peak_memory_mb, 3),
            "slots": {s: {"peak_jobs": j, "peak_memory_mb": round(m, 3)} for s, (j, m) in sorted(self.slots.items())},
        }


@dataclass
class Assignment:
    """Where one job starts before and after planning."""

    name: str
    slot: str
    pinned: bool
    window_s: int
    old_offset_s: int
    offset_s: int

    @property
    def moved(self) -> bool:
        return self.offset_s != self.old_offset_s

    @property
    def wait_seconds(self) -> int:
        return self.offset_s % 60

    @property
    def minute_shift(self) -> int:
        """Whole minutes after the cron tick (only for windows wider than a minute)."""
        return self.offset_s // 60


@dataclass
class Plan:
    """The planner's answer."""

    objective: str
    offsets: list[int]
    assignments: list[Assignment]
    before: LoadProfile
    after: LoadProfile
    peer: LoadProfile
    bound: Peaks
    runtime_s: float
    stats: dict = field(default_factory=dict)
    load_model: str = "p95"

    @property
    def moves(self) -> list[Assignment]:
        return [a for a in self.assignments if a.moved]

    def ratio(self, profile: LoadProfile) -> tuple[float, float]:
        """(peak runs, peak memory) over their lower bounds."""
        return (_ratio(profile.peak_jobs, self.bound.peak_jobs),
                _ratio(profile.peak_memory_mb, self.bound.peak_memory_mb))


@dataclass
class Variation:
    """Peaks of one plan re-simulated with random durations (see :func:`sample_variation`)."""

    peak_jobs: list[int]
    peak_memory_mb: list[float]
    bound_jobs: list[float]
    bound_memory_mb: list[float]

    @property
    def ratio_jobs(self) -> float:
        """Mean over the samples of peak / the bound of the same sample."""
        return float(np.mean([_ratio(p, b) for p, b in zip(self.peak_jobs, self.bound_jobs, strict=True)]))

    @property
    def ratio_memory(self) -> float:
        return float(np.mean([_ratio(p, b) for p, b in zip(self.peak_memory_mb, self.bound_memory_mb, strict=True)]))

    def as_dict(self) -> dict:
        return {
            "samples": len(self.peak_jobs),
            "peak_jobs_mean": round(float(np.mean(self.peak_jobs)), 3),
            "peak_jobs_max": int(max(self.peak_jobs)),
            "peak_memory_mb_mean": round(float(np.mean(self.peak_memory_mb)), 3),
            "peak_memory_mb_max": round(float(max(self.peak_memory_mb)), 3),
            "ratio_jobs": round(self.ratio_jobs, 4),
            "ratio_memory": round(self.ratio_memory, 4),
        }


def _ratio(value: float, bound: float) -> float:
    if bound <= 0:
        return 1.0 if value <= 0 else math.inf
    return float(value) / float(bound)


# --------------------------------------------------------------------------------------
# Schedules -> ticks in the cycle
# --------------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


_DAY_DIVISORS = _divisors(DAY_S)


def _day_start(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).timestamp())


@lru_cache(maxsize=4096)
def _cron_ticks(expr: str, tz: str, day: dt.date) -> np.ndarray:
    """Seconds of the UTC day at which ``expr`` ticks (day fields ignored: busiest day)."""
    from croniter import croniter

    text = normalize_cron(expr)
    minutes, hours = croniter(text).expanded[:2]
    mins = range(60) if "*" in minutes else [int(m) for m in minutes]
    hrs = range(24) if "*" in hours else [int(h) for h in hours]
    local = np.array([h * 3600 + m * 60 for h in hrs for m in mins], dtype=np.int64)
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC).astimezone(validate_timezone(tz))
    shift = int(noon.utcoffset().total_seconds())
    ticks = np.unique((local - shift) % DAY_S)
    ticks.flags.writeable = False
    return ticks


@lru_cache(maxsize=4096)
def _interval_ticks(interval: int, day: dt.date) -> np.ndarray:
    """Grid points ``k * interval`` (epoch-aligned) falling in the reference UTC day."""
    start = _day_start(day)
    first = -(-start // interval) * interval
    ticks = np.arange(first, start + DAY_S, interval, dtype=np.int64) - start
    ticks.flags.writeable = False
    return ticks


def _period(ticks: np.ndarray, length: int) -> int:
    """Smallest divisor p of the cycle such that the tick set repeats every p seconds."""
    n = len(ticks)
    for p in _DAY_DIVISORS if length == DAY_S else _divisors(length):
        copies = length // p
        if n % copies:
            continue
        head = ticks[: n // copies]
        if head.size and head[-1] >= p:
            continue
        if np.array_equal((head[None, :] + p * np.arange(copies)[:, None]).ravel(), ticks):
            return p
    return length


def _circ_counts(starts: np.ndarray, durs: np.ndarray | int, length: int,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of ``weights`` over runs ``[start, start + dur)`` at each second of a circular cycle."""
    starts = np.asarray(starts, dtype=np.int64)
    durs = np.broadcast_to(np.asarray(durs, dtype=np.int64), starts.shape)
    w = np.ones(starts.shape) if weights is None else np.broadcast_to(np.asarray(weights, dtype=float), starts.shape)
    full, rem = np.divmod(durs, length)  # runs longer than the cycle cover it whole `full` times
    ends = starts + rem
    wrap = ends > length
    plus = np.concatenate([starts, np.zeros(int(wrap.sum()), dtype=np.int64)])
    minus = np.concatenate([np.minimum(ends, length), ends[wrap] - length])
    wp = np.concatenate([w, w[wrap]])
    diff = np.bincount(plus, wp, length + 1) - np.bincount(minus, wp, length + 1)
    return np.cumsum(diff[:length]) + float((full * w).sum())


def _self_overlap(head: np.ndarray, dur: int, period: int) -> int:
    """Most runs of one job alive at once (the same for every offset)."""
    n = len(head)
    if not n:
        return 0
    full, rem = divmod(dur, period)
    if not rem:
        return full * n
    # Runs alive at a start t are those started in (t - rem, t], counted on the circle.
    ext = np.concatenate([head - period, head])
    alive = np.searchsorted(ext, head, side="right") - np.searchsorted(ext, head - rem, side="right")
    return full * n + int(alive.max())


@dataclass
class _Job:
    ticks: np.ndarray  # tick seconds in the cycle
    period: int  # the ticks repeat every `period` seconds (divides the cycle)
    head: np.ndarray  # ticks in [0, period)
    dur: int  # whole seconds, >= 1
    mem: float
    base: int  # smallest allowed offset
    window: int  # number of allowed offsets: base .. base + window - 1
    offset0: int  # current offset (wait_seconds)
    slot: int  # index into _Model.slots, -1 for peer jobs
    fixed: bool
    selfk: int  # most runs of this job alive at once (shift-invariant)
    idx: np.ndarray | None = None  # cached residues its candidate runs touch (see _Engine.scores)
    # Survival load model: the expected load of all its runs at offset 0, folded by the
    # period, as the residues it touches (`support`) and the values there (`shape`).
    support: np.ndarray | None = None
    shape: np.ndarray | None = None
    span: int = 0  # seconds one run's survival curve lasts (survival model only)
    p95_s: float = 0.0  # the planned duration in seconds, before rounding to whole seconds


@lru_cache(maxsize=1)
def _normal_sf_table() -> tuple[np.ndarray, np.ndarray]:
    z = np.linspace(-9.0, 9.0, 36001)
    return z, np.array([0.5 * math.erfc(v / math.sqrt(2.0)) for v in z])


def survival_curve(p95: float) -> np.ndarray:
    """``S[k]``: the chance that a run whose duration has this 95th percentile still
    occupies its ``k``-th second (``S[0] = 1``), under the variation model of
    :func:`sample_variation` (lognormal, median ``p95 / 1.6``; a run counts in every
    second it touches).  Ends where ``S`` falls below ``SURVIVAL_CUTOFF``."""
    median = max(float(p95), 1e-3) / P95_OVER_MEDIAN
    last = max(1, math.ceil(median * math.exp(3.1 * LOGNORMAL_SIGMA)))  # S(last) < 1e-3
    k = np.arange(1, last + 1, dtype=float)
    z, sf = _normal_sf_table()
    tail = np.interp((np.log(k) - math.log(median)) / LOGNORMAL_SIGMA, z, sf)
    curve = np.concatenate([[1.0], tail])
    keep = np.flatnonzero(curve >= SURVIVAL_CUTOFF)
    return curve[: int(keep[-1]) + 1]


def _whole_seconds(duration: float) -> int:
    # A run is counted in every second it touches, so 0.3 s still occupies one second.
    return max(1, math.ceil(float(duration) - 1e-9))


class _Model:
    """Jobs compiled to ticks, periods and whole-second durations."""

    def __init__(self, jobs: Sequence[PlanJob], peer: Sequence[PlanJob] = (), day: dt.date | None = None,
                 duration_scale: float = 1.0) -> None:
        self.survival = False  # boxes; see use_survival
        self.day = day or dt.datetime.now(dt.UTC).date()
        self.length = DAY_S
        self.slots: list[str] = sorted({j.slot for j in jobs})
        slot_index = {s: i for i, s in enumerate(self.slots)}
        self.jobs = [self._compile(j, slot_index[j.slot], fixed=j.pinned, scale=duration_scale) for j in jobs]
        self.peer = [self._compile(j, -1, fixed=True, scale=duration_scale) for j in peer]
        self.n_arrays = 1 + len(self.slots)  # 0 = total, 1 + s = slot s

    def _compile(self, job: PlanJob, slot: int, *, fixed: bool, scale: float) -> _Job:
        if job.cron is not None:
            ticks = _cron_ticks(job.cron, job.tz or "UTC", self.day)
        else:
            ticks = _interval_ticks(int(job.interval_s), self.day)
        if DAY_S % (job.interval_s or 1) == 0 and job.interval_s:
            period = int(job.interval_s)
        else:
            period = _period(ticks, self.length) if len(ticks) else self.length
        head = ticks[ticks < period]
        dur = _whole_seconds(job.duration_s * scale)
        offset0 = int(job.wait_seconds)
        if job.interval_s:
            offset0 %= int(job.interval_s)  # the phase of the grid
        window = 1 if fixed else max(1, min(int(job.window_s), period))
        base = offset0 if fixed else 0
        selfk = _self_overlap(head, dur, period)
        return _Job(ticks, period, head, dur, float(job.memory_mb), base, window, offset0, slot, fixed, selfk,
                    p95_s=float(job.duration_s) * scale)

    def use_survival(self, risk: float, scale: np.ndarray) -> None:
        """Switch every job (ours, pinned, peer) to the survival load model: each second of
        a run weighs ``S + lam_r * S(1-S)`` runs and ``m*S + lam_m * m^2 * S(1-S)`` MB, its
        expected load plus a variance term, folded by the job's period.

        Mean-variance: at a second the load is a sum of independent runs, each there with
        probability S (mean ``sum w S``, variance ``sum w^2 S(1-S)``), and its peak over a
        day is about ``mean + risk * sd``.  ``sd`` does not add up run by run, so it is
        linearised around ``sd0``, the sd expected where the mean reaches ``scale`` (the
        search's normaliser, about the peak a flat plan of mean durations would reach):
        ``risk * sd ~ const + risk / (2 sd0) * variance``, so ``lam = risk / (2 sd0)`` with
        ``sd0^2 = scale * (sum of w^2 S(1-S)) / (sum of w S)`` over all runs of the cycle."""
        everything = self.jobs + self.peer
        curves = [survival_curve(c.p95_s) for c in everything]
        sums = np.zeros((2, 2))  # (runs, MB) x (mean, variance), over all runs of the cycle
        for c, curve in zip(everything, curves, strict=True):
            mean, var = curve.sum(), (curve * (1 - curve)).sum()
            sums += len(c.ticks) * np.array([[mean, var], [c.mem * mean, c.mem * c.mem * var]])
        lam = np.zeros(2)
        for r in (0, 1):
            sd0 = math.sqrt(max(float(scale[r]), 0.0) * sums[r, 1] / sums[r, 0]) if sums[r, 0] > 0 else 0.0
            lam[r] = risk / (2 * sd0) if risk > 0 and sd0 > 0 else 0.0
        for c, curve in zip(everything, curves, strict=True):
            var = curve * (1.0 - curve)
            rows = np.stack([curve + lam[0] * var, c.mem * curve + lam[1] * c.mem * c.mem * var])
            # Folded by the period, kept only where it is not zero (no period-long arrays).
            pos = ((c.head[:, None] + np.arange(len(curve))) % c.period).ravel()
            c.support, inverse = np.unique(pos, return_inverse=True)
            c.shape = np.stack([np.bincount(inverse, np.tile(row, len(c.head)), len(c.support)) for row in rows])
            c.span = len(curve)
            c.idx = None
        self.survival = True

    # Runs of all jobs, concatenated (job-major, tick order): used by the simulator.
    def runs(self, which: str = "jobs") -> tuple[np.ndarray, np.ndarray]:
        comp = self.jobs if which == "jobs" else self.peer
        if not comp:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        ticks = np.concatenate([c.ticks for c in comp])
        owner = np.repeat(np.arange(len(comp)), [len(c.ticks) for c in comp])
        return ticks, owner


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------
def _profile(model: _Model, offsets: np.ndarray, durs: np.ndarray | None = None,
             peer_durs: np.ndarray | None = None, with_slots: bool = True) -> LoadProfile:
    length = model.length
    jobs_total = np.zeros(length)
    mem_total = np.zeros(length)
    slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ticks, owner = model.runs("jobs")
    if ticks.size:
        starts = (ticks + offsets[owner]) % length
        d = np.array([c.dur for c in model.jobs])[owner] if durs is None else durs
        mem = np.array([c.mem for c in model.jobs])[owner]
        slot_of = np.array([c.slot for c in model.jobs])[owner]
        if with_slots:
            for s, name in enumerate(model.slots):
                sel = slot_of == s
                cj = _circ_counts(starts[sel], d[sel], length)
                cm = _circ_counts(starts[sel], d[sel], length, mem[sel])
                slots[name] = (np.rint(cj).astype(np.int64), cm)
                jobs_total += cj
                mem_total += cm
        else:
            jobs_total += _circ_counts(starts, d, length)
            mem_total += _circ_counts(starts, d, length, mem)
    pticks, powner = model.runs("peer")
    if pticks.size:
        pstarts = (pticks + np.array([c.offset0 for c in model.peer])[powner]) % length
        pd = np.array([c.dur for c in model.peer])[powner] if peer_durs is None else peer_durs
        pm = np.array([c.mem for c in model.peer])[powner]
        jobs_total += _circ_counts(pstarts, pd, length)
        mem_total += _circ_counts(pstarts, pd, length, pm)
    return LoadProfile(length, np.rint(jobs_total).astype(np.int64), mem_total, slots)


def _offsets_array(model: _Model, offsets: Sequence[int] | None) -> np.ndarray:
    if offsets is None:
        return np.array([c.offset0 for c in model.jobs], dtype=np.int64)
    if len(offsets) != len(model.jobs):
        raise ValueError(f"{len(offsets)} offsets given for {len(model.jobs)} jobs")
    return np.asarray(offsets, dtype=np.int64)


def simulate(jobs: Sequence[PlanJob], offsets: Sequence[int] | None = None, *, peer: Sequence[PlanJob] = (),
             day: dt.date | None = None) -> LoadProfile:
    """Concurrent runs and memory at every second of the 24 h cycle.

    ``offsets[i]`` is job i's start in seconds after its ticks (default: its
    ``wait_seconds``).  Peer jobs run at their own ``wait_seconds`` and count in the
    totals only; ``slots`` holds our jobs per slot.
    """
    model = _Model(jobs, peer, day)
    return _profile(model, _offsets_array(model, offsets))


def peer_profile(peer: Sequence[PlanJob], day: dt.date | None = None) -> LoadProfile:
    """The peer's own load (fixed), for reports and plots."""
    return simulate([], [], peer=peer, day=day)


# --------------------------------------------------------------------------------------
# Lower bound
# --------------------------------------------------------------------------------------
@dataclass
class _RunGroup:
    """Runs sharing a period p: release r in [0, p), slack delta = window - 1, duration, weight."""

    period: int
    array: np.ndarray  # which load (0 = total, 1 + s = slot s)
    release: np.ndarray
    slack: np.ndarray
    dur: np.ndarray
    mem: np.ndarray


def _groups(model: _Model, *, slots: bool = True) -> list[_RunGroup]:
    parts: dict[int, list[tuple]] = {}

    def put(c: _Job, arrays: Iterable[int]) -> None:
        rel = (c.head + c.base) % c.period
        for a in arrays:
            n = len(rel)
            parts.setdefault(c.period, []).append(
                (np.full(n, a), rel, np.full(n, c.window - 1), np.full(n, c.dur), np.full(n, c.mem)))

    for c in model.jobs:
        put(c, (0, 1 + c.slot) if slots else (0,))
    for c in model.peer:
        put(c, (0,))
    out = []
    for p, items in parts.items():
        cols = [np.concatenate(x) for x in zip(*items, strict=True)]
        out.append(_RunGroup(p, cols[0].astype(np.int64), cols[1].astype(np.int64), cols[2].astype(np.int64),
                             cols[3].astype(np.int64), cols[4].astype(float)))
    return out


def _forced_work(groups: list[_RunGroup], n_arrays: int, length: int, ell: int) -> np.ndarray:
    """(2 * n_arrays, length): least work (runs x s, MB x s) forced into [a, a + ell) for every a
    (row 2 * array + resource); see :func:`_energetic`."""
    rows = n_arrays * 2
    acc = np.zeros((rows, length))
    for g in groups:
        a_ = ell - g.slack  # the "A" of g(x)
        b_ = g.dur
        ok = a_ + b_ >= 2
        if not ok.any():
            continue
        a_, b_ = a_[ok], b_[ok]
        c = np.minimum(b_, ell)
        rel = g.release[ok]
        knee1 = np.minimum(c - a_, (b_ - a_) // 2)
        knee2 = np.maximum(b_ - c, -((a_ - b_) // 2))
        pos = np.concatenate([rel - a_, rel + knee1, rel + knee2, rel + b_])
        lo = int(pos.min())
        span = int(pos.max()) - lo + 2
        sign = np.repeat(np.array([1.0, -1.0, -1.0, 1.0]), len(rel))
        arr = np.tile(g.array[ok], 4)
        mem = np.tile(g.mem[ok], 4)
        idx = np.concatenate([(2 * arr) * span + pos - lo, (2 * arr + 1) * span + pos - lo])
        wts = np.concatenate([sign, sign * mem])
        d2 = np.bincount(idx, wts, rows * span).reshape(rows, span)
        vals = np.zeros((rows, span))
        vals[:, 1:] = np.cumsum(np.cumsum(d2, axis=1), axis=1)[:, :-1]  # g at x = sum_{y<x} d1(y)
        p = g.period
        shift = lo % p
        total = shift + span
        padded = np.zeros((rows, -(-total // p) * p))
        padded[:, shift:total] = vals
        folded = padded.reshape(rows, -1, p).sum(axis=1)
        acc.reshape(rows, length // p, p)[...] += folded[:, None, :]
    return acc


def _energetic(groups: list[_RunGroup], n_arrays: int, length: int, lengths: Sequence[int] = BOUND_LENGTHS,
               tops: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energetic bound: for every circular interval [a, a + l), the work that must fall inside.

    A run released at r with slack delta (it starts somewhere in [r, r + delta]) and
    duration D overlaps [a, a + l) by at least ``min(ov(r), ov(r + delta))`` whatever its
    start (overlap is concave in the start, so its minimum is at an end), which works
    out as ``g(x) = max(0, min(x + l - delta, min(D, l), D - x))`` with ``x = a - r``.
    Any plan has a second in the interval carrying at least the mean, so
    ``peak >= sum(weight * g) / l``.  ``g`` is piecewise linear with slopes +-1, so for
    all ``a`` at once it is four point masses in its second difference; runs of a
    period ``p`` are summed on ``p`` residues and tiled.

    Returns (bound, best interval length, its start) arrays of shape (n_arrays, 2) for
    (runs, MB); ``tops`` (if given) receives, per length, (length, bound of its best
    interval, that interval's start), each of shape (n_arrays, 2).
    """
    best = np.zeros((n_arrays, 2))
    best_len = np.zeros((n_arrays, 2), dtype=np.int64)
    best_pos = np.zeros((n_arrays, 2), dtype=np.int64)
    for ell in lengths:
        acc = _forced_work(groups, n_arrays, length, ell)
        here = (acc.max(axis=1) / ell).reshape(n_arrays, 2)
        better = here > best
        best = np.where(better, here, best)
        best_len = np.where(better, ell, best_len)
        where = acc.argmax(axis=1).reshape(n_arrays, 2)
        best_pos = np.where(better, where, best_pos)
        if tops is not None:
            tops.append((ell, here, where))
    return best, best_len, best_pos


def _bounds(model: _Model, *, slots: bool = True, lagrangian_s: float = 0.0) -> np.ndarray:
    """(n_arrays, 2) lower bounds on (peak runs, peak MB) for total and each slot.

    ``lagrangian_s`` CPU seconds (0: none) are spent raising the energetic bounds with the
    Lagrangian bound (:class:`_Lagrangian`) of uniform weights on intervals: the best
    interval of each length, then the best of them with its ends moved while the bound
    rises.  Totals first, then the slots."""
    n_arrays = model.n_arrays if slots else 1
    tops: list = []
    bound, _, _ = _energetic(_groups(model, slots=slots), n_arrays, model.length, tops=tops)
    if lagrangian_s > 0:
        _lagrangian_bounds(model, bound, tops, n_arrays, time.process_time() + lagrangian_s)
    # A single job alone already reaches selfk runs and selfk * memory.
    for c in model.jobs + model.peer:
        arrays = (0, 1 + c.slot) if (slots and c.slot >= 0) else (0,)
        for a in arrays:
            bound[a, 0] = max(bound[a, 0], c.selfk)
            bound[a, 1] = max(bound[a, 1], c.selfk * c.mem)
    _against_fixed(model, bound, n_arrays)
    bound[:, 0] = np.ceil(bound[:, 0] - 1e-9)  # run counts are whole numbers
    return bound


class _Lagrangian:
    """Lagrangian (LP-dual) bound on the peak of one load ``a``, resource ``r`` (0 runs, 1 MB).

    For any weights ``y >= 0`` on the seconds with ``sum(y) = 1`` and any plan, the peak
    is at least the ``y``-weighted mean load, and each job's part of that mean is at least
    its smallest over its allowed offsets, so

        peak >= L(y) = sum_t y_t * fixed_t + sum_j w_j * min_o sum_{t run by j at o} y_t

    whatever the offsets.  All runs of a job share one offset, which energetic reasoning
    (one run at a time) cannot use; the energetic bound of an interval is ``L`` of the
    uniform weights on it, and the best ``y`` gives the LP relaxation of the time-indexed
    model.  ``L`` is concave; its supergradient at ``y`` is the load of the plan that puts
    every job at its cheapest offset.  Every ``y`` tried gives a valid bound and the
    largest is kept: :func:`_bounds` tries the uniform weights on the best interval of
    every length of the energetic bound, then moves the ends of the best interval.
    """

    def __init__(self, model: _Model, a: int, r: int, fixed: np.ndarray | None = None) -> None:
        self.length = model.length
        self.fixed = (_fixed_load(model) if fixed is None else fixed)[a, r]
        members = [c for c in model.jobs if not c.fixed and (a == 0 or c.slot == a - 1)]
        parts: dict[tuple, list[_Job]] = {}
        for c in members:
            parts.setdefault((c.period, c.head.tobytes()), []).append(c)
        self.groups = []
        for (p, _), cs in parts.items():
            head = cs[0].head
            # Jobs alike in (base, window, duration) have the same cheapest offset: merge them.
            keys = np.array([(c.base, c.window, c.dur) for c in cs], dtype=np.int64)
            keys, inverse = np.unique(keys, axis=0, return_inverse=True)
            base, win, dur = keys[:, 0], keys[:, 1], keys[:, 2]
            w = np.bincount(inverse.ravel(), None if r == 0 else np.array([c.mem for c in cs]), len(keys))
            o = np.arange(int(win.max()))
            st = head[None, None, :] + base[:, None, None] + o[None, :, None]
            tiles = -(-(int(st.max() + dur.max()) + 1) // p)
            self.groups.append((p, st, st + dur[:, None, None], o[None, :] >= win[:, None], w, tiles))

    def value(self, support: np.ndarray, weights: np.ndarray) -> float:
        """L(y) for ``y`` equal to ``weights`` on the seconds ``support`` (distinct) and 0
        elsewhere; ``weights`` should sum to 1 (any non-negative ``y`` gives a valid
        bound after dividing by its sum)."""
        value = float(weights @ self.fixed[support])
        folds: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for p, st, en, bad, w, tiles in self.groups:
            fold = folds.get((p, tiles))
            if fold is None:  # y folded by the period, as sorted positions and prefix sums
                r = support % p
                order = np.argsort(r, kind="stable")
                pos = (r[order][None, :] + p * np.arange(tiles)[:, None]).ravel()
                cum = np.concatenate([[0.0], np.cumsum(np.tile(weights[order], tiles))])
                fold = folds[(p, tiles)] = (pos, cum)
            pos, cum = fold
            # y summed over each run [start, end): prefix(end) - prefix(start), over the heads.
            cost = (cum[np.searchsorted(pos, en)] - cum[np.searchsorted(pos, st)]).sum(axis=2)
            cost[bad] = np.inf
            value += float((w * cost.min(axis=1)).sum())
        return value

    def box(self, start: int, ell: int) -> float:
        """L of the uniform weights on the circular interval [start, start + ell)."""
        ell = min(ell, self.length)
        return self.value((start + np.arange(ell)) % self.length, np.full(ell, 1.0 / ell))


def _lagrangian_bounds(model: _Model, bound: np.ndarray, tops: list, n_arrays: int, cpu_end: float) -> None:
    """Raise ``bound`` in place with Lagrangian bounds until the CPU clock reaches ``cpu_end``."""
    fixed = _fixed_load(model)
    for a in range(n_arrays):
        for r in (0, 1):
            if bound[a, r] <= 0 or time.process_time() > cpu_end:
                continue
            lag = _Lagrangian(model, a, r, fixed)
            starts = [(int(where[a, r]), ell) for ell, here, where in tops if here[a, r] >= 0.7 * bound[a, r]]
            bound[a, r] = max(bound[a, r], _best_box(lag.box, starts, cpu_end, model.length))


def _best_box(value, boxes: list[tuple[int, int]], cpu_end: float, length: int) -> float:
    """Largest ``value(start, ell)`` over the given intervals, then over moves of the best
    one's ends (by 40, 20, ..., 1 s) while it rises.  Every value is a valid bound."""
    best, best_box = -math.inf, None
    # Longest first: long intervals gain most from linking a job's runs.
    for start, ell in sorted(boxes, key=lambda b: -b[1]):
        if ell < 20:
            continue
        if time.process_time() > cpu_end:
            break
        val = value(start, ell)
        if val > best:
            best, best_box = val, (start, ell)
    if best_box is None:
        return best
    start, ell = best_box
    steps = (40, 20, 10, 5, 2, 1)
    k = 0
    while k < len(steps) and time.process_time() < cpu_end:
        d = steps[k]
        for s2, l2 in ((start - d, ell + d), (start + d, ell - d), (start, ell + d), (start, ell - d),
                       (start - d, ell), (start + d, ell)):
            if not 1 <= l2 <= length:
                continue
            val = value(s2 % length, l2)
            if val > best + 1e-12 * abs(best):
                best, start, ell = val, s2 % length, l2
                break
        else:
            k += 1
    return best


def _box_bound_runs(release: np.ndarray, slack: np.ndarray, dur: np.ndarray, owner: np.ndarray,
                    mem: np.ndarray, length: int, start: int, ell: int) -> tuple[float, float]:
    """Lagrangian bound (runs, MB) of the uniform weights on [start, start + ell) for runs
    given one by one: run i starts in [release_i, release_i + slack_i], lasts dur_i and
    belongs to job owner_i (-1: a fixed run); all runs of a job share one offset."""
    span = int((slack + dur).max()) + 1
    if span + ell > length:
        return 0.0, 0.0
    rel = (release - start + span) % length - span  # the run's release relative to the interval
    sel = (rel + slack + dur > 0) & (rel < ell)  # runs that can meet the interval at all
    rel, slack, dur, owner, mem = rel[sel], slack[sel], dur[sel], owner[sel], mem[sel]
    fixed = owner < 0
    ov_fixed = np.clip(np.minimum(rel[fixed] + dur[fixed], ell) - np.maximum(rel[fixed], 0), 0, None)
    runs, mb = float(ov_fixed.sum()), float((ov_fixed * mem[fixed]).sum())
    mov = ~fixed
    if mov.any():
        rel, slack, dur, owner, mem = rel[mov], slack[mov], dur[mov], owner[mov], mem[mov]
        wmax = int(slack.max()) + 1
        o = np.arange(wmax)[None, :]
        ov = np.clip(np.minimum(rel[:, None] + o + dur[:, None], ell) - np.maximum(rel[:, None] + o, 0), 0, None)
        ov = np.where(o <= slack[:, None], ov, 1e18).astype(float)  # offsets beyond the window
        jobs, local = np.unique(owner, return_inverse=True)
        cost = np.bincount((local.ravel()[:, None] * wmax + o).ravel(), ov.ravel(), len(jobs) * wmax)
        least = cost.reshape(len(jobs), wmax).min(axis=1)
        job_mem = np.zeros(len(jobs))
        job_mem[local.ravel()] = mem
        runs += float(least.sum())
        mb += float((least * job_mem).sum())
    return runs / ell, mb / ell


def _against_fixed(model: _Model, bound: np.ndarray, n_arrays: int) -> None:
    """Each movable job on top of the fixed load: wherever it starts, the peak is at least
    the highest fixed load (pinned + peer) it meets, plus its own runs."""
    fixed = _fixed_load(model)[:n_arrays]
    has_fixed = [bool(fixed[a].any()) for a in range(n_arrays)]
    length = model.length
    # Jobs alike in (load, period, ticks, window) differ only by duration: one sweep over
    # the durations serves them all (the highest fixed load met over d seconds, grown
    # one second at a time).
    needs: dict[tuple, set[int]] = {}
    for c in model.jobs:
        if c.fixed:
            continue
        for a in (0, 1 + c.slot)[:n_arrays]:
            if has_fixed[a]:
                needs.setdefault((a, c.period, c.head.tobytes(), c.base, c.window), set()).add(c.dur)
    lows: dict[tuple, dict[int, np.ndarray]] = {}
    for key, durs in needs.items():
        a, p, head_bytes, base, window = key
        head = np.frombuffer(head_bytes, dtype=np.int64)
        f = fixed[a].reshape(2, length // p, p).max(axis=1)
        out = lows[key] = {}
        whole = f.max(axis=1)
        short = sorted(d for d in durs if d < p)
        for d in durs:
            if d >= p:
                out[d] = whole
        if not short:
            continue
        idx = (head[:, None] + (base + np.arange(window + short[-1] - 1))[None, :]) % p
        span = f[:, idx]  # (2, heads, window + dmax - 1)
        met = span[..., :window].copy()  # highest fixed load over the first d seconds of each run
        want = set(short)
        for d in range(1, short[-1] + 1):
            if d > 1:
                np.maximum(met, span[..., d - 1: d - 1 + window], out=met)
            if d in want:
                out[d] = met.max(axis=1).min(axis=1)
    for c in model.jobs:
        if c.fixed:
            continue
        for a in (0, 1 + c.slot)[:n_arrays]:
            if has_fixed[a]:
                low = lows[(a, c.period, c.head.tobytes(), c.base, c.window)][c.dur]
                bound[a] = np.maximum(bound[a], low + c.selfk * np.array([1.0, c.mem]))


def _peaks_from(model: _Model, arr: np.ndarray) -> Peaks:
    slots = {s: (float(arr[1 + i, 0]), float(arr[1 + i, 1])) for i, s in enumerate(model.slots)}
    return Peaks(float(arr[0, 0]), float(arr[0, 1]), slots)


def lower_bound(jobs: Sequence[PlanJob], peer: Sequence[PlanJob] = (), *, day: dt.date | None = None,
                lagrangian_s: float = LAGRANGIAN_S) -> Peaks:
    """A peak no plan can beat, for runs and memory, in total and per slot.

    The maximum of valid bounds, each holding for every choice of offsets:

    * energetic reasoning (:func:`_energetic`) over circular intervals of the lengths in
      ``BOUND_LENGTHS``: the least work forced into an interval, divided by its length.
      With length 1 it is the compulsory load: pinned and peer runs, plus every run
      whose duration is at least its window (it is running at its tick + window - 1
      wherever it starts).  With longer intervals it is the group bound: runs whose
      windows all lie in [T, T + W) are entirely inside [T, T + W - 1 + max d], so
      ``peak >= sum(d*m) / (W - 1 + max d)``, generalised to overlapping windows of
      different jobs and to partial overlaps;
    * the Lagrangian bound (:class:`_Lagrangian`): for weights ``y`` on the seconds
      summing to 1, the peak is at least the weighted mean load, which is at least the
      fixed load's mean plus, for each job, its least weighted load over its offsets.
      Unlike the energetic bound it knows that all runs of a job share one offset.
      Uniform weights on intervals are tried within ``lagrangian_s`` CPU seconds;
    * the largest single job, times the number of its own runs alive at once;
    * every movable job on top of the fixed load: whatever its offset, its runs meet the
      fixed load somewhere, so the peak is at least the least, over its offsets, of the
      highest fixed load its runs touch, plus the job itself.

    Run counts are rounded up, as a peak of runs is a whole number.
    """
    model = _Model(jobs, peer, day)
    return _peaks_from(model, _bounds(model, lagrangian_s=lagrangian_s))


# --------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------
def _sliding_max(a: np.ndarray, width: int) -> np.ndarray:
    """Max over each window of ``width`` along the last axis (log-doubling)."""
    out = a
    k = 1
    while 2 * k <= width:
        out = np.maximum(out[..., :-k], out[..., k:])
        k *= 2
    if k < width:
        out = np.maximum(out[..., : out.shape[-1] - (width - k)], out[..., width - k:])
    return out


class _Engine:
    """Load arrays plus the machinery to evaluate and place one job quickly.

    ``X[a]`` holds (runs, MB) per second for load ``a`` (0 = total, 1 + s = slot s) and
    ``E[a] = exp(beta * (X[a] / bound - 1))``, the terms of the smooth "soft peak"
    ``sum_t E``.  Its fold by a period is a sum, and adding a pattern that repeats with
    that period multiplies the fold by ``exp(beta * delta / bound)``: exact and O(period).
    Changes of jobs with a period ``q`` below the cycle are kept as a (runs, MB) pattern
    of length ``q`` in ``pending`` and only tiled into ``X``/``E`` when another period is
    entered, so a placement costs O(q), not O(cycle).
    """

    def __init__(self, model: _Model, scales: np.ndarray, objective: str, beta: float) -> None:
        self.model = model
        self.length = model.length
        self.X = np.zeros((model.n_arrays, 2, model.length))
        self.inv = 1.0 / np.maximum(scales, 1e-9)
        self.objective = objective
        # Soft-peak weight of the (runs, MB) rows: the favoured resource dominates.
        self.row_weight = {"memory": np.array([0.05, 1.0]), "jobs": np.array([1.0, 0.05])}.get(
            objective, np.array([1.0, 1.0]))
        self.set_beta(beta)
        self.pending: dict[int, np.ndarray] = {}
        self.pending_arrays: dict[int, set[int]] = {}
        self.period: int | None = None
        self.fmax: dict[int, np.ndarray] = {}
        self.fsum: dict[int, np.ndarray] = {}
        self.offsets = np.array([c.offset0 for c in model.jobs], dtype=np.int64)

    def set_beta(self, beta: float) -> None:
        """(Re)build the soft-peak terms for a new sharpness."""
        self.beta = beta
        self.binv = beta * self.inv  # (n_arrays, 2)
        self.E = np.exp(np.minimum(self.X * self.binv[:, :, None] - beta, _EXP_CAP))
        self.fsum = {}

    # -- state ------------------------------------------------------------------------
    def _materialize(self) -> None:
        n_arr, length = self.X.shape[0], self.length
        for q, acc in self.pending.items():
            xv = self.X.reshape(n_arr, 2, length // q, q)
            ev = self.E.reshape(n_arr, 2, length // q, q)
            for a in self.pending_arrays[q]:
                nz = np.flatnonzero(acc[a].any(axis=0))
                if nz.size * 4 < q:  # few residues changed: touch only those
                    xv[a][:, :, nz] += acc[a][:, None, nz]
                    ev[a][:, :, nz] *= np.exp(acc[a][:, nz] * self.binv[a][:, None])[:, None, :]
                elif nz.size:
                    xv[a] += acc[a][:, None, :]
                    ev[a] *= np.exp(acc[a] * self.binv[a][:, None])[:, None, :]
        self.pending.clear()
        self.pending_arrays.clear()

    def enter(self, period: int) -> None:
        """Work on jobs of this period next (folds are per period)."""
        if period != self.period:
            self._materialize()
            self.fmax, self.fsum = {}, {}
            self.period = period

    def sync(self) -> np.ndarray:
        """Apply all pending changes; returns X."""
        self._materialize()
        self.fmax, self.fsum = {}, {}
        self.period = None
        return self.X

    def add_fixed(self, load: np.ndarray, array: int) -> None:
        self.X[array] += load
        self.E[array] *= np.exp(np.minimum(load * self.binv[array][:, None], _EXP_CAP))

    def _flush(self, a: int) -> None:
        """Apply this period's pending changes of load ``a`` before folding it."""
        p = self.period
        if a in self.pending_arrays.get(p, ()):
            acc = self.pending[p][a]
            self.X[a].reshape(2, self.length // p, p)[...] += acc[:, None, :]
            self.E[a].reshape(2, self.length // p, p)[...] *= np.exp(acc * self.binv[a][:, None])[:, None, :]
            acc[...] = 0.0
            self.pending_arrays[p].discard(a)

    def _fold_max(self, a: int) -> np.ndarray:
        fm = self.fmax.get(a)
        if fm is None:
            self._flush(a)
            p = self.period
            fm = self.X[a] if p == self.length else self.X[a].reshape(2, self.length // p, p).max(axis=1)
            self.fmax[a] = fm
        return fm

    def _fold_sum(self, a: int) -> np.ndarray:
        fs = self.fsum.get(a)
        if fs is None:
            self._flush(a)
            p = self.period
            fs = self.E[a] if p == self.length else self.E[a].reshape(2, self.length // p, p).sum(axis=1)
            self.fsum[a] = fs
        return fs

    def _arrays(self, c: _Job) -> tuple[int, int]:
        return (0, 1 + c.slot)

    def place(self, j: int, offset: int, sign: float = 1.0) -> None:
        """Add (sign=1) or remove (sign=-1) job j's runs at ``offset``."""
        c = self.model.jobs[j]
        p = c.period
        w = np.array([sign, sign * c.mem])
        arrays = self._arrays(c)
        # Few seconds touched and no self-overlap: update just those (distinct) positions.
        if c.shape is not None:  # survival model: the folded expected load, distinct residues
            sparse = True
            pos = (c.support + offset) % p
            w = sign * c.shape  # (2, touched)
        elif len(c.head) * c.dur * 4 < p and c.selfk <= 1:
            sparse = True
            pos = ((c.head + offset)[:, None] + np.arange(c.dur)).ravel() % p
            w = np.broadcast_to(w[:, None], (2, len(pos)))
        else:
            sparse = False
            pat = _circ_counts((c.head + offset) % p, c.dur, p)
        if p == self.length:
            for a in arrays:
                if sparse:
                    self.X[a][:, pos] += w
                    self.E[a][:, pos] *= np.exp(w * self.binv[a][:, None])
                else:
                    delta = w[:, None] * pat
                    self.X[a] += delta
                    self.E[a] *= np.exp(delta * self.binv[a][:, None])
        else:
            assert self.period == p
            acc = self.pending.get(p)
            if acc is None:
                acc = self.pending[p] = np.zeros((self.X.shape[0], 2, p))
                self.pending_arrays[p] = set()
            for a in arrays:
                self.pending_arrays[p].add(a)
                # Exact for the fold: the change repeats with the fold's own period.
                if sparse:
                    acc[a][:, pos] += w
                    if a in self.fmax:
                        self.fmax[a][:, pos] += w
                    if a in self.fsum:
                        self.fsum[a][:, pos] *= np.exp(w * self.binv[a][:, None])
                else:
                    delta = w[:, None] * pat
                    acc[a] += delta
                    if a in self.fmax:
                        self.fmax[a] += delta
                    if a in self.fsum:
                        self.fsum[a] *= np.exp(delta * self.binv[a][:, None])
        self.offsets[j] = offset

    def scores(self, j: int, peaks: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """Per candidate offset: the (4, window) normalised peaks the job would see (if
        ``peaks``) and the increase of the soft peak (weighted by the objective)."""
        c = self.model.jobs[j]
        if c.shape is not None:
            return self._scores_shaped(c, peaks)
        p = c.period
        rows = []
        soft = np.zeros(c.window)
        w = np.array([1.0, c.mem])
        if c.dur < p and c.idx is None:
            c.idx = (c.head[:, None] + (c.base + np.arange(c.window + c.dur - 1))[None, :]) % p
        for a in self._arrays(c):
            fs = self._fold_sum(a)
            gain = np.expm1(w * self.binv[a]) * self.row_weight  # exp(beta * w / bound) - 1
            if c.dur >= p:
                soft += float((fs.sum(axis=1) * len(c.head) * gain).sum())
            else:
                cs = np.cumsum(fs[:, c.idx], axis=-1)
                s = cs[..., c.dur - 1:].copy()
                s[..., 1:] -= cs[..., : -c.dur]
                soft += gain @ s.sum(axis=1)
            if peaks:
                fm = self._fold_max(a)
                if c.dur >= p:
                    v = np.repeat(fm.max(axis=1)[:, None], c.window, axis=1)
                else:
                    v = _sliding_max(fm[:, c.idx], c.dur).max(axis=1)
                rows.append((v + (w * c.selfk)[:, None]) * self.inv[a][:, None])
        return (np.concatenate(rows) if peaks else None), soft

    def _scores_shaped(self, c: _Job, peaks: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """:meth:`scores` for a job of the survival model: its folded expected load is
        added at each candidate offset, residue by residue (exact, self-overlap included)."""
        if c.idx is None:
            c.idx = ((c.base + np.arange(c.window))[:, None] + c.support[None, :]) % c.period  # (window, m)
        load = c.shape  # (2, m)
        soft = np.zeros(c.window)
        rows = []
        for a in self._arrays(c):
            gain = np.expm1(np.minimum(load * self.binv[a][:, None], _EXP_CAP)) * self.row_weight[:, None]
            soft += np.einsum("rwm,rm->w", self._fold_sum(a)[:, c.idx], gain)
            if peaks:
                v = (self._fold_max(a)[:, c.idx] + load[:, None, :]).max(axis=2)  # (2, window)
                rows.append(v * self.inv[a][:, None])
        return (np.concatenate(rows) if peaks else None), soft

    def choose(self, j: int, prefer: int, mode: str = "soft") -> int:
        """Best offset for job j given the current load (its own runs removed).

        ``soft``: least increase of the soft peak; ``max``: lowest normalised peak over
        the seconds the job touches (per the objective), the soft peak breaking ties.
        The current offset wins exact ties, so nothing moves without a reason.
        """
        c = self.model.jobs[j]
        if c.window == 1:
            return c.base
        peaks, soft = self.scores(j, mode == "max")
        cand = c.base + np.arange(c.window)
        not_prefer = (cand != prefer).astype(float)
        # On a log scale (the terms span many orders of magnitude), rounded so ties are real ties.
        soft_key = np.round(np.log(np.maximum(soft, 1e-300)), 9)
        if mode == "max":
            # peaks rows: total runs, total MB, slot runs, slot MB
            if self.objective == "memory":
                first = peaks[[1, 3]].max(axis=0) + 1e-3 * peaks[[0, 2]].max(axis=0)
            elif self.objective == "jobs":
                first = peaks[[0, 2]].max(axis=0) + 1e-3 * peaks[[1, 3]].max(axis=0)
            else:
                first = peaks.max(axis=0)
            keys = (not_prefer, soft_key, np.round(first, 9))
        else:
            keys = (not_prefer, soft_key)
        return int(cand[np.lexsort(keys)[0]])


def _objective_key(X: np.ndarray, inv: np.ndarray, objective: str) -> tuple[float, ...]:
    """Global score of a load state (smaller is better)."""
    peaks = X.max(axis=2) * inv  # (n_arrays, 2)
    # Leximax: the largest normalised peak, then the next largest, and so on (a load stuck
    # at a whole-run floor, say 4 runs on a bound of 3, does not hide the others).
    if objective == "memory":
        order = tuple(-np.sort(-peaks[:, 1])) + tuple(-np.sort(-peaks[:, 0]))
    elif objective == "jobs":
        order = tuple(-np.sort(-peaks[:, 0])) + tuple(-np.sort(-peaks[:, 1]))
    else:
        order = tuple(-np.sort(-peaks.ravel()))
    worst = np.unravel_index(int(np.argmax(peaks)), peaks.shape)
    at_peak = int((X[worst[0], worst[1]] * inv[worst] >= peaks[worst] - 1e-9).sum())
    return tuple(round(float(v), 9) for v in order) + (at_peak, round(float(peaks.sum()), 9))


class _Coverage:
    """Vectorised "which jobs are running at second t" for the local search."""

    def __init__(self, model: _Model) -> None:
        movable = [j for j, c in enumerate(model.jobs) if not c.fixed and c.window > 1]
        self.owner = np.concatenate([np.full(len(model.jobs[j].head), j) for j in movable]) if movable else \
            np.zeros(0, dtype=np.int64)
        self.head = np.concatenate([model.jobs[j].head for j in movable]) if movable else np.zeros(0, dtype=np.int64)
        self.period = np.array([model.jobs[j].period for j in self.owner], dtype=np.int64)
        # How long a run counts as running: its box, or its survival curve.
        self.dur = np.array([max(model.jobs[j].dur, model.jobs[j].span) for j in self.owner], dtype=np.int64)
        self.slot = np.array([model.jobs[j].slot for j in self.owner], dtype=np.int64)

    def at(self, offsets: np.ndarray, second: int, slot: int | None, radius: int = 0) -> np.ndarray:
        """Movable jobs with a run meeting [second - radius, second + radius] (in ``slot`` if given)."""
        if not self.owner.size:
            return self.owner
        lo = second - radius
        start = self.head + offsets[self.owner]
        hit = (((lo - start) % self.period) < self.dur) | (((start - lo) % self.period) <= 2 * radius)
        if slot is not None:
            hit &= self.slot == slot
        return np.unique(self.owner[hit])


def _size_order(model: _Model, scales: np.ndarray) -> list[int]:
    """Movable jobs in placement order: size tiers (x2), by period within a tier, large first."""
    movable = [j for j, c in enumerate(model.jobs) if not c.fixed]
    if not movable:
        return []
    inv_j = 1.0 / max(scales[0, 0], 1e-9)
    inv_m = 1.0 / max(scales[0, 1], 1e-9)
    size = {j: model.jobs[j].dur * (inv_j + model.jobs[j].mem * inv_m) for j in movable}
    top = max(size.values())
    # Tiers of a factor 2 keep "largest first" while letting jobs of one period share a fold.
    tier = {j: int(math.floor(math.log2(top / max(size[j], top * 1e-12)))) for j in movable}
    return sorted(movable, key=lambda j: (tier[j], model.jobs[j].period, -size[j], j))


def _ils_total(n_jobs: int, exact: bool = False) -> float:
    """CPU seconds a whole plan may take before the randomised search stops (it only
    runs with time left: small and medium inputs; large ones spend the budget earlier).
    With the exact polishing phase after it, the search stops earlier and leaves it the rest."""
    if n_jobs > EXACT_MAX_JOBS:
        return 0.0
    return ILS_WITH_EXACT_S if exact else SEARCH_TOTAL_S


def _cpsat_module():
    """OR-Tools' compiled CP-SAT module, or None when OR-Tools is not installed.

    Only ``cp_model_helper`` is imported (models are passed as protobuf text), not
    ``ortools.sat.python.cp_model``, which would also load pandas and protobuf."""
    try:
        from ortools.sat.python import cp_model_helper
    except ImportError:
        return None
    return cp_model_helper


def _fixed_load(model: _Model) -> np.ndarray:
    """(n_arrays, 2, cycle) load of the runs that cannot move: peer and pinned jobs."""
    length = model.length
    out = np.zeros((model.n_arrays, 2, length))
    groups: list[tuple[tuple[int, ...], list[_Job]]] = [((0,), list(model.peer))]
    for s in range(len(model.slots)):
        groups.append(((0, 1 + s), [c for c in model.jobs if c.fixed and c.slot == s]))
    for arrays, comp in groups:
        if not comp:
            continue
        if model.survival:
            load = sum(_job_load(c, c.offset0, length) for c in comp)
        else:
            starts = np.concatenate([(c.ticks + c.offset0) % length for c in comp])
            durs = np.concatenate([np.full(len(c.ticks), c.dur) for c in comp])
            mem = np.concatenate([np.full(len(c.ticks), c.mem) for c in comp])
            load = np.stack([_circ_counts(starts, durs, length), _circ_counts(starts, durs, length, mem)])
        for a in arrays:
            out[a] += load
    return out


def optimize(jobs: Sequence[PlanJob], peer: Sequence[PlanJob] = (), *, objective: str = "balanced",
             day: dt.date | None = None, passes: int = 4, rounds: int = 40, time_budget_s: float = 7.0,
             load_model: str = "p95", tune: dict | None = None) -> Plan:
    """Choose every unpinned job's offset within its window to flatten the peaks.

    See the module docstring for the objective and the algorithm.  ``passes`` and
    ``rounds`` cap the two local-search phases (deterministic); ``time_budget_s`` (CPU
    seconds) stops the passes on very large inputs.  Peer jobs are fixed load in the
    totals.  ``tune`` overrides search constants for experiments (``beta``,
    ``beta_end``, ``radii``, ``max_lift``, ``rr_share``, ``ils_total_s``, ``ils_min_s``,
    ``lagrangian_s``, ``slot_slack``) and of the exact phase (``exact``: True turns it on, off by default:
    see docs/planning.md, "Algorithm", step 5;
    ``exact_total_s``, ``exact_jobs``, ``exact_radius``, ``exact_rounds``,
    ``exact_round_s``, ``exact_round_dt``, ``exact_lazy``; see :func:`_exact_polish`).
    ``stats["exact"]`` says whether it ran: ``on``, ``off``, ``no time`` or
    ``unavailable`` (OR-Tools not installed).  ``load_model="survival"`` makes the search
    flatten each run's survival curve plus a variance margin instead of its p95 box
    (``tune={"risk": x}``, default ``SURVIVAL_RISK``; no exact phase); the plan is
    reported the same way (p95 boxes), see docs/planning.md.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if load_model not in LOAD_MODELS:
        raise ValueError(f"load_model must be one of {', '.join(LOAD_MODELS)}, got {load_model!r}")
    cfg = {"beta": 20.0, "beta_end": 60.0, "greedy_mode": "soft", "pass_mode": "soft"}
    cfg.update(tune or {})
    t0 = time.perf_counter()
    # CPU time, so that a busy machine does not change the plan.
    cpu0 = time.process_time()
    deadline = cpu0 + time_budget_s
    model = _Model(jobs, peer, day)
    bound = _bounds(model, lagrangian_s=float(cfg.get("lagrangian_s", LAGRANGIAN_S)))
    scales = np.where(bound > 0, bound, 1.0)
    survival = load_model == "survival"
    if survival:
        # The search works on expected load (plus a variance term); its peaks are
        # normalised by the p95 bound scaled to the mean duration (a scale that makes
        # runs and MB comparable, not a reported bound: computing the bound of mean
        # durations too cost 0.3-0.5 s at 300 jobs and changed nothing measurable).
        scales = scales * MEAN_OVER_P95
        model.use_survival(float(cfg.get("risk", SURVIVAL_RISK)), scales[0])
    # The totals (what the machine feels) come first: a slot's peak is normalised by 1.25x
    # its bound, so it only competes with the totals once it is 25 % above its own bound.
    scales[1:] *= float(cfg.get("slot_slack", SLOT_SLACK))
    t_bound = time.perf_counter() - t0
    eng = _Engine(model, scales, objective, cfg["beta"])

    # Fixed load: peer (total only) and pinned jobs (total and their slot).
    fixed = _fixed_load(model)
    for a in range(model.n_arrays):
        if fixed[a].any():
            eng.add_fixed(fixed[a], a)

    # 1. Greedy, largest first.
    order = _size_order(model, scales)
    for j in order:
        c = model.jobs[j]
        eng.enter(c.period)
        eng.place(j, eng.choose(j, prefer=c.offset0, mode=cfg["greedy_mode"]))
    t_greedy = time.perf_counter() - t0

    # 2. Passes over every movable job: lift it, re-place it on the soft peak, sharpening as we go.
    by_period = sorted(order, key=lambda j: model.jobs[j].period)  # stable: large first within a period
    n_passes = 0
    for k in range(passes):
        if time.process_time() > deadline:
            break
        if passes > 1:
            eng.sync()
            eng.set_beta(cfg["beta"] + (cfg["beta_end"] - cfg["beta"]) * k / (passes - 1))
        moved = 0
        for i, j in enumerate(by_period):
            c = model.jobs[j]
            if c.window == 1:
                continue
            if i % 256 == 0 and time.process_time() > deadline:
                break
            eng.enter(c.period)
            old = int(eng.offsets[j])
            eng.place(j, old, -1.0)
            new = eng.choose(j, prefer=old, mode=cfg["pass_mode"])
            eng.place(j, new)
            moved += new != old
        n_passes += 1
        if not moved:
            break
    t_passes = time.perf_counter() - t0

    # 3. Ruin and recreate: lift every job near the worst second of the worst load, put them
    # back largest first on the exact peak; keep the result only if the plan got better.
    cover = _Coverage(model)
    rank = {j: i for i, j in enumerate(order)}
    best_key = _objective_key(eng.sync(), eng.inv, objective)
    best_offsets = eng.offsets.copy()
    stuck: set[tuple[int, int]] = set()
    tries: dict[tuple[int, int], int] = {}  # failed attempts per target: the lifted region widens
    n_rounds = 0
    radii = cfg.get("radii", (30, 120))
    max_lift = int(cfg.get("max_lift", 150))
    # This phase rarely gains much on large inputs: give it a quarter of the time spent so far.
    cpu_now = time.process_time()
    rr_deadline = min(deadline, cpu_now + max(0.1, cfg.get("rr_share", 0.25) * (cpu_now - cpu0)))
    for _ in range(rounds):
        if time.process_time() > rr_deadline:
            break
        X = eng.sync()
        peaks = X.max(axis=2) * eng.inv
        target = None
        for flat in np.argsort(-peaks, axis=None):
            a, r = (int(v) for v in np.unravel_index(int(flat), peaks.shape))
            if (a, r) not in stuck and peaks[a, r] > 0:
                target = (a, r)
                break
        if target is None:
            break
        a, r = target
        second = int(np.argmax(X[a, r]))
        slot = None if a == 0 else a - 1
        lifted = cover.at(eng.offsets, second, slot, radii[tries.get(target, 0)])
        if lifted.size > max_lift:  # keep those at the peak second, then the largest
            core = set(cover.at(eng.offsets, second, slot).tolist())
            rest = sorted((j for j in lifted.tolist() if j not in core), key=rank.__getitem__)
            lifted = np.array(sorted(core, key=rank.__getitem__)[:max_lift] + rest[: max(0, max_lift - len(core))])
        if not lifted.size:
            stuck.add(target)
            continue
        n_rounds += 1
        lifted_list = sorted(lifted.tolist(), key=rank.__getitem__)
        old = {j: int(eng.offsets[j]) for j in lifted_list}
        for j in sorted(lifted_list, key=lambda j: model.jobs[j].period):
            eng.enter(model.jobs[j].period)
            eng.place(j, old[j], -1.0)
        for j in lifted_list:
            eng.enter(model.jobs[j].period)
            eng.place(j, eng.choose(j, prefer=old[j], mode="max"))
        key = _objective_key(eng.sync(), eng.inv, objective)
        if key < best_key:
            best_key, best_offsets = key, eng.offsets.copy()
            stuck.clear()
            tries.clear()
        else:
            for j in sorted(lifted_list, key=lambda j: model.jobs[j].period):  # undo
                eng.enter(model.jobs[j].period)
                eng.place(j, int(eng.offsets[j]), -1.0)
                eng.place(j, old[j])
            tries[target] = tries.get(target, 0) + 1
            if tries[target] >= len(radii):
                stuck.add(target)
    # 4. Randomised ruin and recreate (iterated local search) while the CPU budget lasts:
    # lift a few jobs running at a busiest second of a heavily loaded load (not only the
    # worst: the others count through the sum of normalised peaks), put them back in a
    # shuffled order on the exact peak, keep the result if the objective is no worse
    # (sideways moves let the search walk along plateaus).  Seeded, so deterministic.
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    cpu_now = time.process_time()
    # 5. (below) needs OR-Tools; without it the randomised search keeps all the time.
    exact_status = None
    use_exact = (bool(cfg.get("exact", False)) and not survival
                 and len(jobs) <= int(cfg.get("exact_max_jobs", EXACT_MAX_JOBS))
                 and float(cfg.get("exact_total_s", SEARCH_TOTAL_S)) > 0 and any(c.window > 1 and not c.fixed
                                                                                for c in model.jobs))
    exact_end = min(deadline, cpu0 + float(cfg.get("exact_total_s", SEARCH_TOTAL_S)))
    # A CP-SAT round costs 0.2-0.5 s whatever its limit (presolve): phase 5 only runs when
    # that much is left after a short search; otherwise the search keeps the whole budget.
    room = float(cfg.get("exact_room_s", EXACT_ROOM_S))
    if use_exact and exact_end - cpu_now < room + float(cfg.get("ils_min_s", 0.1)):
        use_exact = False
        exact_status = "no time"
    cpsat = _cpsat_module() if use_exact else None
    ils_total = float(cfg.get("ils_total_s", _ils_total(len(jobs), cpsat is not None)))  # CPU s for the whole call
    ils_min = float(cfg.get("ils_min_s", 0.1 if cpsat is not None else 0.2))
    ils_deadline = min(deadline, max(cpu0 + ils_total, cpu_now + ils_min))
    if cpsat is not None:
        ils_deadline = min(ils_deadline, exact_end - room)
    n_ils = n_ils_better = 0
    cur_key = best_key
    while time.process_time() < ils_deadline and cover.owner.size:
        X = eng.sync()
        peaks = X.max(axis=2) * eng.inv
        top = float(peaks.max())
        if top <= 0:
            break
        cand = np.argwhere(peaks >= top * float(cfg.get("ils_near", 0.9)))
        a, r = (int(v) for v in (np.unravel_index(int(np.argmax(peaks)), peaks.shape) if rng.random() < 0.5
                                 else cand[rng.integers(len(cand))]))
        row = X[a, r] * eng.inv[a, r]
        hot = np.flatnonzero(row >= row.max() - 1e-9)
        second = int(hot[rng.integers(len(hot))])
        slot = None if a == 0 else a - 1
        pool = cover.at(eng.offsets, second, slot, int(rng.choice((0, 0, 10, 30, 60))))
        if not pool.size:
            continue
        k = int(min(pool.size, rng.integers(2, 9)))
        lifted_list = [int(j) for j in rng.choice(pool, size=k, replace=False)]
        # Put back period by period (a fold is rebuilt at each change of period), the
        # periods in random order, within a period largest first or shuffled.
        by_p: dict[int, list[int]] = {}
        for j in lifted_list:
            by_p.setdefault(model.jobs[j].period, []).append(j)
        groups = list(by_p.values())
        rng.shuffle(groups)
        if rng.random() < 0.5:
            for g in groups:
                g.sort(key=rank.__getitem__)
        lifted_list = [j for g in groups for j in g]
        old = {j: int(eng.offsets[j]) for j in lifted_list}
        for j in sorted(lifted_list, key=lambda j: model.jobs[j].period):
            eng.enter(model.jobs[j].period)
            eng.place(j, old[j], -1.0)
        for j in lifted_list:
            c = model.jobs[j]
            eng.enter(c.period)
            # Half the time the first job must move: a kick out of the local optimum.
            prefer = old[j] if (j != lifted_list[0] or rng.random() < 0.5) else -1
            new = eng.choose(j, prefer=prefer, mode="max")
            if prefer == -1 and new == old[j] and c.window > 1:
                new = int(c.base + (new - c.base + rng.integers(1, c.window)) % c.window)
            eng.place(j, new)
        n_ils += 1
        key = _objective_key(eng.sync(), eng.inv, objective)
        if key <= cur_key:
            cur_key = key
            if key < best_key:
                best_key, best_offsets = key, eng.offsets.copy()
                n_ils_better += 1
        else:
            for j in sorted(lifted_list, key=lambda j: model.jobs[j].period):  # undo
                eng.enter(model.jobs[j].period)
                eng.place(j, int(eng.offsets[j]), -1.0)
                eng.place(j, old[j])
    offsets = best_offsets
    # 5. Exact polishing: CP-SAT on the jobs of the busiest seconds, a few dozen at a time.
    if exact_status is None:
        exact_status = "off" if not use_exact else "unavailable" if cpsat is None else "on"
    exact_stats: dict = {"exact": exact_status}
    t_ils = time.perf_counter() - t0
    if cpsat is not None:
        offsets, more = _exact_polish(cpsat, model, bound, scales, np.asarray(offsets, dtype=np.int64), objective, cfg,
                                      exact_end)
        exact_stats.update(more)

    before = _profile(model, np.array([c.offset0 for c in model.jobs], dtype=np.int64))
    after = _profile(model, offsets)
    peer_load = _profile(_Model([], peer, model.day), np.zeros(0, dtype=np.int64))
    assignments = [
        Assignment(j.name, j.slot, j.pinned, int(c.window), int(c.offset0), int(offsets[i]))
        for i, (j, c) in enumerate(zip(jobs, model.jobs, strict=True))
    ]
    stats = {"bound_s": round(t_bound, 4), "greedy_s": round(t_greedy, 4), "passes_s": round(t_passes, 4),
             "search_s": round(t_ils, 4), "polish_s": round(time.perf_counter() - t0, 4),
             "passes": n_passes, "rr_rounds": n_rounds, "ils_rounds": n_ils, "ils_improved": n_ils_better,
             "jobs": len(jobs), "peer": len(peer), **exact_stats}
    return Plan(objective, [int(o) for o in offsets], assignments, before, after, peer_load,
                _peaks_from(model, bound), time.perf_counter() - t0, stats, load_model)


# --------------------------------------------------------------------------------------
# Exact polishing (optional): the time-indexed model of a few jobs, solved by a MILP solver
# --------------------------------------------------------------------------------------
def _load_arrays(model: _Model, offsets: np.ndarray) -> np.ndarray:
    """(n_arrays, 2, cycle) loads of a plan (total, then each slot), as the engine holds them."""
    prof = _profile(model, offsets)
    X = np.zeros((model.n_arrays, 2, model.length))
    X[0, 0], X[0, 1] = prof.jobs, prof.memory
    for s, name in enumerate(model.slots):
        X[1 + s, 0], X[1 + s, 1] = prof.slots[name]
    return X


def _job_load(c: _Job, offset: int, length: int) -> np.ndarray:
    """(2, cycle) runs and memory of one job at ``offset``: boxes, or its survival load."""
    if c.shape is not None:
        folded = np.zeros((2, c.period))
        folded[:, (c.support + offset) % c.period] = c.shape
        return np.tile(folded, length // c.period)
    runs = _circ_counts((c.ticks + offset) % length, c.dur, length)
    return np.stack([runs, runs * c.mem])


def _exact_polish(cpsat, model: _Model, bound: np.ndarray, scales: np.ndarray, offsets: np.ndarray, objective: str,
                  cfg: dict, cpu_end: float) -> tuple[np.ndarray, dict]:
    """Exact polishing: CP-SAT large-neighbourhood search around the busiest seconds.

    Each round frees ``exact_jobs`` movable jobs with a run near a busiest second of the
    worst total load (runs or memory), keeps every other job where it is, and solves the
    model of the freed jobs exactly or nearly with OR-Tools CP-SAT: one integer offset per
    freed job; each of its runs that can meet the *region* (the minutes where a total is
    within ``exact_theta`` of its peak, and the minutes beside them) is an interval
    starting at tick + offset; per load (total and each slot, runs and MB) a cumulative
    constraint over those intervals plus the fixed load of everything else at the seconds
    they can reach.  The totals' capacities are variables (between the lower bound and
    today's peak) whose normalised sum is minimised; a slot's capacity is its peak today
    (no slot may get worse).  Runs outside the region are not modelled: the result is
    re-simulated in full and kept only if the planner's objective improves, and minutes
    where a load rose are added to the region of later rounds.

    CP-SAT runs with one worker and a fixed seed, each round to ``exact_round_s`` seconds
    and a deterministic limit ``exact_round_dt``; the phase stops at ``cpu_end`` (CPU
    time, like the other phases) or after ``exact_rounds`` rounds.  ``cpsat`` is the
    module from :func:`_cpsat_module` (OR-Tools is an optional dependency).
    """
    stats: dict = {"exact_rounds": 0, "exact_improved": 0}
    length = model.length
    inv = 1.0 / scales  # the search's normalisation (bounds, slots with their slack)
    if not any(not c.fixed and c.window > 1 for c in model.jobs):
        return offsets, stats
    offsets = offsets.copy()
    cover = _Coverage(model)
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    k_jobs = int(cfg.get("exact_jobs", 60))
    theta = float(cfg.get("exact_theta", 0.95))
    max_rounds = int(cfg.get("exact_rounds", 10**9))
    res_w = {"memory": np.array([0.1, 1.0]), "jobs": np.array([1.0, 0.1])}.get(objective, np.array([1.0, 1.0]))
    # Memory in integer units of 1/mem_q MB (CP-SAT is integral); the re-simulation is exact.
    mem_q = float(cfg.get("exact_mem_q", 1.0))
    X = _load_arrays(model, offsets)
    key = _objective_key(X, inv, objective)
    extra = np.zeros(length // 60, dtype=bool)  # minutes added after a load rose there
    # A round costs a presolve (0.1-0.3 s at 300 jobs) before its time limit starts to matter:
    # no new round on the last 0.15 s.
    while stats["exact_rounds"] < max_rounds and time.process_time() < cpu_end - (0.15 if stats["exact_rounds"] else 0):
        pk = X.max(axis=2)
        r0 = int(np.argmax(pk[0] * inv[0] * res_w))
        hot = np.flatnonzero(X[0, r0] >= pk[0, r0] - 1e-9)
        second = int(hot[rng.integers(len(hot))])
        pool = cover.at(offsets, second, None, int(cfg.get("exact_radius", 120)))
        if not pool.size:
            break
        free = sorted(int(j) for j in rng.choice(pool, size=min(k_jobs, pool.size), replace=False))
        minute = extra.copy()
        for r in (0, 1):
            minute[np.flatnonzero(X[0, r] >= theta * pk[0, r]) // 60] = True
        near = np.flatnonzero(minute)
        minute[(near[:, None] + np.array([-1, 1])).ravel() % minute.size] = True
        region = np.repeat(minute, 60)
        # Solve; if a load rose where the model did not look (outside the region), add those
        # minutes and solve the same neighbourhood again (at most exact_lazy times).
        for attempt in range(int(cfg.get("exact_lazy", 3))):
            if attempt and time.process_time() > cpu_end - 0.15:
                break
            got = _cpsat_round(cpsat, model, bound, inv, res_w, mem_q, offsets, free, X, pk, region, cfg, cpu_end)
            stats["exact_rounds"] += 1
            if got is None:
                break
            new_x, new_offsets = got
            new_key = _objective_key(new_x, inv, objective)
            if new_key < key:
                X, offsets, key = new_x, new_offsets, new_key
                stats["exact_improved"] += 1
                break
            rose = np.flatnonzero((new_x > pk[:, :, None] + 1e-6).any(axis=(0, 1))) // 60
            if not rose.size:
                break
            extra[rose] = True
            minute[(rose[:, None] + np.array([-1, 0, 1])).ravel() % minute.size] = True
            region = np.repeat(minute, 60)
    return offsets, stats


def _cpsat_round(cpsat, model: _Model, bound: np.ndarray, inv: np.ndarray, res_w: np.ndarray, mem_q: float,
                 offsets: np.ndarray, free: list[int], X: np.ndarray, pk: np.ndarray, region: np.ndarray,
                 cfg: dict, cpu_end: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Solve one neighbourhood of :func:`_exact_polish`: the new loads and offsets, or None."""
    text, pos = _cpsat_text(model, bound, inv, res_w, mem_q, offsets, free, X, pk, region,
                            float(cfg.get("exact_floor", 0.0)))
    round_s = max(0.01, min(float(cfg.get("exact_round_s", 0.6)), cpu_end - time.process_time()))
    params = cpsat.SatParameters()
    params.parse_text_format(
        f"num_workers: 1 random_seed: {int(cfg.get('seed', 0))} "
        f"max_deterministic_time: {float(cfg.get('exact_round_dt', 1.0))} max_time_in_seconds: {round_s:.3f}")
    proto = cpsat.CpModelProto()
    if not proto.parse_text_format(text):
        return None
    wrapper = cpsat.SolveWrapper()
    wrapper.set_parameters(params)
    response = wrapper.solve(proto)
    if response.status not in (cpsat.CpSolverStatus.OPTIMAL, cpsat.CpSolverStatus.FEASIBLE):
        return None
    values = list(response.solution)
    length = model.length
    new_x, new_offsets = X.copy(), offsets.copy()
    for j in free:
        c = model.jobs[j]
        new = c.base + int(values[pos[j]])
        if new != offsets[j]:
            arrays = (0, 1 + c.slot)
            new_x[arrays, :, :] += _job_load(c, new, length) - _job_load(c, int(offsets[j]), length)
            new_offsets[j] = new
    return new_x, new_offsets


def _cpsat_text(model: _Model, bound: np.ndarray, inv: np.ndarray, res_w: np.ndarray, mem_q: float,
                offsets: np.ndarray, free: list[int], X: np.ndarray, pk: np.ndarray,
                region: np.ndarray, floor_frac: float = 0.0) -> tuple[str, dict[int, int]]:
    """The CP-SAT model of one :func:`_exact_polish` round, in protobuf text format, and the
    index of each freed job's offset variable."""
    length, n_arr = model.length, model.n_arrays
    out: list[str] = []
    pos: dict[int, int] = {}
    n_vars = 0
    hint_v, hint_x = [], []
    runs: dict[int, np.ndarray] = {}
    line = length + MAX_WINDOW_S + int(max(c.dur for c in model.jobs)) + 1  # seconds past midnight unrolled
    reach = np.zeros(line, dtype=bool)
    for j in free:
        c = model.jobs[j]
        rel = (c.ticks + c.base) % length
        cells = rel[:, None] + np.arange(c.window - 1 + c.dur)[None, :]
        meets = region[cells % length].any(axis=1)
        runs[j] = rel[meets]
        if runs[j].size:
            reach[cells[meets].ravel()] = True
        now = int(offsets[j]) - c.base
        pos[j] = n_vars
        n_vars += 1
        # A job with no run in the region stays where it is (nothing here could tell).
        out.append(f"variables {{ domain: [{0 if runs[j].size else now}, {c.window - 1 if runs[j].size else now}] }}")
        hint_v.append(pos[j])
        hint_x.append(now)
    # Only the seconds of the region the freed runs can reach get constraints; there, the
    # load of everything else (rest) and the most the freed jobs could add (all their
    # offsets at once), per load.
    cells = np.flatnonzero(reach & region[np.arange(line) % length])
    at = cells % length
    rest = X[:, :, at].copy()
    most = np.zeros_like(rest)
    for j in free:
        c = model.jobs[j]
        phase = (at[:, None] - c.head[None, :]) % c.period
        own = (((phase - int(offsets[j])) % c.period) < c.dur).sum(axis=1)
        can = (((phase - c.base) % c.period) < c.dur + c.window - 1).sum(axis=1)
        for a in (0, 1 + c.slot):
            rest[a, 0] -= own
            rest[a, 1] -= own * c.mem
            most[a, 0] += can
            most[a, 1] += can * c.mem
    z_var, floor_cap = {}, np.zeros((n_arr, 2))
    for r in (0, 1):
        q = 1.0 if r == 0 else mem_q
        # The totals' peaks are looked for between floor_frac x today's peak (at least the
        # bound) and today's peak: seconds that cannot exceed the floor need no constraint.
        lo = max(math.ceil(bound[0, r] * q - 1e-9), math.floor(floor_frac * pk[0, r] * q))
        hi = max(lo, math.floor(pk[0, r] * q + 1e-6))
        floor_cap[0, r] = lo / q
        z_var[r] = n_vars
        n_vars += 1
        out.append(f"variables {{ domain: [{lo}, {hi}] }}")
        hint_v.append(z_var[r])
        hint_x.append(hi)
    n_cons = 0
    job_iv: dict[int, list[int]] = {}  # job -> indices of its interval constraints
    for j in free:
        c = model.jobs[j]
        ivs = []
        for t in runs[j].tolist():
            t0 = int(t) + c.base
            out.append(f"constraints {{ interval {{ start {{ vars: {pos[j]} coeffs: 1 offset: {t0} }} "
                       f"end {{ vars: {pos[j]} coeffs: 1 offset: {t0 + c.dur} }} size {{ offset: {c.dur} }} }} }}")
            ivs.append(n_cons)
            n_cons += 1
        job_iv[j] = ivs
    for a in range(n_arr):
        members = [j for j in free if (a == 0 or model.jobs[j].slot == a - 1) and job_iv[j]]
        if not members:
            continue
        for r in (0, 1):
            q = 1.0 if r == 0 else mem_q
            ivs, dem = [], []
            for j in members:
                # Rounded down, like the fixed load: a sum of floors is at most the floor of the
                # sum, so today's plan always fits (the re-simulation is exact anyway).
                d = 1 if r == 0 else math.floor(model.jobs[j].mem * q + 1e-9)
                ivs += job_iv[j]
                dem += [d] * len(job_iv[j])
            # The fixed load on the seconds the intervals can reach, as constant segments.
            cap_lo = floor_cap[0, r] if a == 0 else pk[a, r]
            binding = rest[a, r] + most[a, r] > cap_lo + 1e-6
            if a > 0 and not binding.any():
                continue  # this slot cannot exceed today's peak whatever the freed jobs do
            vals = np.where(binding, np.floor(np.maximum(rest[a, r], 0.0) * q + 1e-6), 0).astype(np.int64)
            cut = np.flatnonzero((np.diff(cells) != 1) | (np.diff(vals) != 0)) + 1
            for seg_start, seg_end in zip(np.r_[0, cut], np.r_[cut, cells.size], strict=True) if cells.size else ():
                v = int(vals[seg_start])
                if v <= 0:
                    continue
                s0, n = int(cells[seg_start]), int(seg_end - seg_start)
                out.append(f"constraints {{ interval {{ start {{ offset: {s0} }} end {{ offset: {s0 + n} }} "
                           f"size {{ offset: {n} }} }} }}")
                ivs.append(n_cons)
                dem.append(v)
                n_cons += 1
            if a == 0:
                cap = f"capacity {{ vars: {z_var[r]} coeffs: 1 }}"
            else:
                cap = f"capacity {{ offset: {math.floor(pk[a, r] * q + 1e-6)} }}"
            demands = " ".join(f"demands {{ offset: {d} }}" for d in dem)
            out.append(f"constraints {{ cumulative {{ {cap} intervals: [{', '.join(map(str, ivs))}] {demands} }} }}")
            n_cons += 1
    # Minimise the totals' normalised peaks (integer weights).
    coeffs = [max(1, round(1e6 * inv[0, r] * res_w[r] / (1.0 if r == 0 else mem_q))) for r in (0, 1)]
    out.append(f"objective {{ vars: [{z_var[0]}, {z_var[1]}] coeffs: [{coeffs[0]}, {coeffs[1]}] }}")
    out.append(f"solution_hint {{ vars: [{', '.join(map(str, hint_v))}] values: [{', '.join(map(str, hint_x))}] }}")
    return "\n".join(out), pos


# --------------------------------------------------------------------------------------
# Duration variation
# --------------------------------------------------------------------------------------
def sample_variation(jobs: Sequence[PlanJob], peer: Sequence[PlanJob], offsets: Sequence[int] | None,
                     rng: np.random.Generator, n: int = 5, *, day: dt.date | None = None,
                     bounds: list[tuple[float, float]] | None = None,
                     lagrangian_s: float = SAMPLE_LAGRANGIAN_S) -> Variation:
    """Peaks of a plan when every run's duration varies, against the bound of each sample.

    Each run (ours, pinned and peer alike) lasts ``duration / 1.6 * exp(sigma * Z)``
    seconds, Z standard normal and ``sigma = ln(1.6) / 1.645``: a lognormal whose
    median is ``duration / 1.6`` and whose 95th percentile is ``duration`` (durations
    are planned at their p95).  Draws depend only on ``rng`` and the job list, not on
    the offsets, so two plans sampled with equally seeded generators see the same
    durations.  For each sample the total peaks are compared with the lower bound of
    the same sampled durations (what a planner knowing them in advance could at best
    reach; energetic and Lagrangian bounds, ``lagrangian_s`` CPU seconds per sample);
    pass ``bounds`` from an earlier call with the same seed to skip recomputing them.
    """
    model = _Model(jobs, peer, day)
    offs = _offsets_array(model, offsets)
    ticks, owner = model.runs("jobs")
    pticks, powner = model.runs("peer")
    base = np.array([j.duration_s for j in jobs], dtype=float)[owner] / P95_OVER_MEDIAN if len(jobs) else np.zeros(0)
    pbase = (np.array([j.duration_s for j in peer], dtype=float)[powner] / P95_OVER_MEDIAN
             if len(peer) else np.zeros(0))
    out = Variation([], [], [], [])
    for k in range(n):
        d = np.maximum(1, np.ceil(base * np.exp(LOGNORMAL_SIGMA * rng.standard_normal(base.shape)) - 1e-9))
        pd = np.maximum(1, np.ceil(pbase * np.exp(LOGNORMAL_SIGMA * rng.standard_normal(pbase.shape)) - 1e-9))
        d, pd = d.astype(np.int64), pd.astype(np.int64)
        prof = _profile(model, offs, d, pd, with_slots=False)
        out.peak_jobs.append(prof.peak_jobs)
        out.peak_memory_mb.append(prof.peak_memory_mb)
        if bounds is not None and k < len(bounds):
            bj, bm = bounds[k]
        else:
            bj, bm = _sample_bound(model, ticks, owner, d, pticks, powner, pd, lagrangian_s)
        out.bound_jobs.append(bj)
        out.bound_memory_mb.append(bm)
    return out


def _sample_bound(model: _Model, ticks: np.ndarray, owner: np.ndarray, d: np.ndarray,
                  pticks: np.ndarray, powner: np.ndarray, pd: np.ndarray,
                  lagrangian_s: float = 0.0) -> tuple[float, float]:
    """Total lower bound with per-run durations (each run its own release and slack):
    energetic, then Lagrangian on intervals (:func:`_box_bound_runs`) for ``lagrangian_s``
    CPU seconds."""
    jobs, peer = model.jobs, model.peer
    base = np.array([c.base for c in jobs], dtype=np.int64)
    slack = np.array([c.window - 1 for c in jobs], dtype=np.int64)
    mem = np.array([c.mem for c in jobs])
    pbase = np.array([c.offset0 for c in peer], dtype=np.int64)
    pmem = np.array([c.mem for c in peer])
    release = np.concatenate([(ticks + base[owner]) % model.length, (pticks + pbase[powner]) % model.length])
    group = _RunGroup(
        model.length, np.zeros(len(release), dtype=np.int64), release,
        np.concatenate([slack[owner], np.zeros(len(pticks), dtype=np.int64)]),
        np.concatenate([d, pd]), np.concatenate([mem[owner], pmem[powner]]))
    tops: list = []
    bound, _, _ = _energetic([group], 1, model.length, tops=tops)
    if lagrangian_s > 0 and len(release):  # runs of one job share its offset: Lagrangian bound
        cpu_end = time.process_time() + lagrangian_s
        run_owner = np.concatenate([owner, np.full(len(pticks), -1)])
        for r in (0, 1):
            def value(start: int, ell: int, r: int = r) -> float:
                return _box_bound_runs(group.release, group.slack, group.dur, run_owner, group.mem,
                                       model.length, start, ell)[r]
            boxes = [(int(where[0, r]), ell) for ell, here, where in tops if here[0, r] >= 0.7 * bound[0, r]]
            share = time.process_time() + (cpu_end - time.process_time()) / (2 - r)  # half each
            bound[0, r] = max(bound[0, r], _best_box(value, boxes, share, model.length))
    bj = math.ceil(bound[0, 0] - 1e-9)
    bm = float(bound[0, 1])
    # The largest single run is a bound too.
    if len(release):
        bj = max(bj, 1)
        bm = max(bm, float(group.mem.max()))
    return float(bj), bm


# --------------------------------------------------------------------------------------
# Picture
# --------------------------------------------------------------------------------------
def _envelope(values: np.ndarray, buckets: int) -> np.ndarray:
    """Per-bucket maximum: keeps every peak visible however narrow."""
    n = len(values)
    size = -(-n // buckets)
    padded = np.full(size * buckets, -np.inf)
    padded[:n] = values
    return padded.reshape(buckets, size).max(axis=1)


def svg_plot(before_profile: LoadProfile, after_profile: LoadProfile, peer_profile: LoadProfile | None,
             path: str | Path, *, title: str = "Load over 24 h (UTC), 1-minute maxima") -> Path:
    """Write a self-contained SVG: runs and memory over the day, before, after and peer.

    Lines differ by dash pattern as well as colour, and each panel states its peaks in
    text, so the picture reads in greyscale too.
    """
    width, panel_h, left, right, top, gap = 960, 250, 70, 20, 60, 70
    plot_w = width - left - right
    height = top + 2 * panel_h + gap + 90
    buckets = 1440
    series = [
        ("before (ours + peer)", before_profile, "#9e9e9e", "8,5", 1.6),
        ("after (ours + peer)", after_profile, "#1565c0", "", 1.8),
    ]
    if peer_profile is not None:
        series.append(("peer only (fixed)", peer_profile, "#c62828", "2,3", 1.4))
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16">{escape(title)}</text>',
    ]
    panels = [("Concurrent runs", "jobs", "runs"), ("Concurrent memory", "memory", "MB")]
    for k, (label, attr, unit) in enumerate(panels):
        y0 = top + k * (panel_h + gap)
        curves = [(name, _envelope(getattr(p, attr).astype(float), buckets), colour, dash, sw)
                  for name, p, colour, dash, sw in series]
        ymax = max(float(c[1].max()) for c in curves) or 1.0
        ymax = _nice(ymax)
        out.append(f'<text x="{left}" y="{y0 - 10}" font-size="14" font-weight="bold">{escape(label)} ({unit})</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#444"/>')
        for i in range(5):  # y grid and labels
            v = ymax * i / 4
            y = y0 + panel_h - panel_h * i / 4
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e0e0e0"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
        for h in range(0, 25, 3):  # x axis: hours
            x = left + plot_w * h / 24
            out.append(f'<line x1="{x:.1f}" y1="{y0 + panel_h}" x2="{x:.1f}" y2="{y0 + panel_h + 5}" stroke="#444"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 18}" text-anchor="middle">{h:02d}:00</text>')
        out.append(f'<text x="{left + plot_w / 2}" y="{y0 + panel_h + 34}" '
                   'text-anchor="middle">time of day (UTC)</text>')
        for name, values, colour, dash, sw in curves:
            pts = []
            for i, v in enumerate(values):  # step line: flat over each minute
                x1 = left + plot_w * i / buckets
                x2 = left + plot_w * (i + 1) / buckets
                y = y0 + panel_h - panel_h * float(v) / ymax
                pts.append(f"{x1:.1f},{y:.1f} {x2:.1f},{y:.1f}")
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{sw}"{dash_attr} '
                       f'points="{" ".join(pts)}"><title>{escape(name)}</title></polyline>')
        peaks = "; ".join(f"{name}: peak {_fmt(float(values.max()))} {unit}" for name, values, *_ in curves)
        out.append(f'<text x="{left + 6}" y="{y0 + 16}" font-size="11">{escape(peaks)}</text>')
    ly = top + 2 * panel_h + gap + 50
    x = left
    for name, _p, colour, dash, sw in series:  # legend: sample line + text
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" y1="{ly}" x2="{x + 40}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="{sw + 1}"{dash_attr}/>')
        style = {"": "solid", "8,5": "dashed", "2,3": "dotted"}[dash]
        out.append(f'<text x="{x + 48}" y="{ly + 4}">{escape(name)} ({style})</text>')
        x += 280
    out.append("</svg>")
    target = Path(path)
    target.write_text("\n".join(out), encoding="utf-8")
    return target


def _nice(v: float) -> float:
    """Round an axis maximum up to 1, 2 or 5 times a power of ten."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"
