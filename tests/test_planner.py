"""Load planner (slots/planner.py) and the optimize_schedule command."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from jobs.schedule import cron_fires_between
from slots import planner
from slots.planner import PlanJob

DAY = dt.date(2025, 1, 15)
START = dt.datetime(2025, 1, 15, tzinfo=dt.UTC)


# --- an independent simulator: fire times from croniter, one run at a time ------------
def ref_ticks(job: PlanJob) -> list[int]:
    if job.interval_s:
        return list(range(0, 86400, job.interval_s))  # intervals here divide the day
    fires = cron_fires_between(job.cron, job.tz, START, START + dt.timedelta(days=1))
    return sorted({int((f - START).total_seconds()) for f in fires})


def ref_simulate(jobs: list[PlanJob], offsets: list[int], peer: list[PlanJob] = ()):
    """(runs, memory) per second in total and per slot, the slow obvious way."""
    runs = np.zeros(86400, dtype=np.int64)
    mem = np.zeros(86400)
    slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    everything = [(j, o, True) for j, o in zip(jobs, offsets, strict=True)] + [(p, p.wait_seconds, False) for p in peer]
    for job, offset, ours in everything:
        dur = max(1, math.ceil(job.duration_s))
        for tick in ref_ticks(job):
            secs = [(tick + offset + k) % 86400 for k in range(dur)]
            for s in secs:
                runs[s] += 1
                mem[s] += job.memory_mb
            if ours:
                sj, sm = slots.setdefault(job.slot, (np.zeros(86400, dtype=np.int64), np.zeros(86400)))
                for s in secs:
                    sj[s] += 1
                    sm[s] += job.memory_mb
    return runs, mem, slots


def small_workload(seed: int, n: int = 24) -> tuple[list[PlanJob], list[PlanJob]]:
    rng = np.random.default_rng(seed)
    crons = ["0 * * * *", "*/15 * * * *", "*/5 * * * *", "0 2 * * *", "30 */6 * * *", "15,45 * * * *"]
    jobs = []
    for i in range(n):
        kind = int(rng.integers(0, len(crons) + 2))
        common = dict(name=f"j{i}", duration_s=float(rng.integers(1, 90)), memory_mb=float(rng.integers(50, 900)),
                      slot=["default", "heavy", "light"][i % 3], pinned=bool(rng.random() < 0.15),
                      wait_seconds=int(rng.integers(0, 30)), window_s=int(rng.choice([60, 60, 30, 10])))
        if kind == len(crons):
            common["wait_seconds"] %= 20
            jobs.append(PlanJob(interval_s=20, **{**common, "duration_s": float(rng.integers(1, 15))}))
        elif kind == len(crons) + 1:
            jobs.append(PlanJob(interval_s=600, **common))
        else:
            jobs.append(PlanJob(cron=crons[kind], **common))
    peer = [PlanJob(name="p0", cron="0 2 * * *", wait_seconds=7, duration_s=120, memory_mb=700),
            PlanJob(name="p1", cron="*/15 * * * *", wait_seconds=30, duration_s=40, memory_mb=200)]
    return jobs, peer


# --- planner ---------------------------------------------------------------------------
@pytest.mark.parametrize("load_model", planner.LOAD_MODELS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reported_peaks_match_an_independent_simulation(seed, load_model):
    jobs, peer = small_workload(seed)
    plan = planner.optimize(jobs, peer, day=DAY, load_model=load_model)
    assert plan.load_model == load_model
    for offsets, profile in ((plan.offsets, plan.after), ([j.wait_seconds for j in jobs], plan.before)):
        runs, mem, slots = ref_simulate(jobs, offsets, peer)
        assert profile.peak_jobs == runs.max()
        assert profile.peak_memory_mb == pytest.approx(mem.max())
        np.testing.assert_array_equal(profile.jobs, runs)
        for slot, (sj, sm) in slots.items():
            assert profile.slots[slot][0].max() == sj.max()
            assert profile.slots[slot][1].max() == pytest.approx(sm.max())


@pytest.mark.parametrize("load_model", planner.LOAD_MODELS)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_pinned_jobs_stay_and_windows_are_respected(seed, load_model):
    jobs, peer = small_workload(seed, n=40)
    plan = planner.optimize(jobs, peer, day=DAY, load_model=load_model)
    for job, offset, a in zip(jobs, plan.offsets, plan.assignments, strict=True):
        assert a.offset_s == offset
        if job.pinned:
            assert offset == job.wait_seconds % (job.interval_s or 10**9)
            assert not a.moved
        else:
            assert 0 <= offset < job.window_s
            if job.interval_s:
                assert offset < job.interval_s
    if load_model == "p95":
        assert (plan.after.peak_jobs <= plan.before.peak_jobs
                or plan.after.peak_memory_mb <= plan.before.peak_memory_mb)


# --- survival load model ------------------------------------------------------------------
def ref_survival(p95: float, k: int) -> float:
    """P(a run still occupies its k-th second): the variation model, computed directly."""
    if k == 0:
        return 1.0
    median = p95 / planner.P95_OVER_MEDIAN
    return 0.5 * math.erfc((math.log(k) - math.log(median)) / planner.LOGNORMAL_SIGMA / math.sqrt(2))


def ref_expected_load(jobs: list[PlanJob], offsets: list[int], peer: list[PlanJob] = ()):
    """Expected (runs, MB) per second in total, run by run and second by second."""
    runs, mem = np.zeros(86400), np.zeros(86400)
    for job, offset in [*zip(jobs, offsets, strict=True), *((p, p.wait_seconds) for p in peer)]:
        curve = planner.survival_curve(job.duration_s)
        for tick in ref_ticks(job):
            for k in range(len(curve)):
                s = ref_survival(job.duration_s, k)
                runs[(tick + offset + k) % 86400] += s
                mem[(tick + offset + k) % 86400] += s * job.memory_mb
    return runs, mem


@pytest.mark.parametrize("p95", [1.0, 7.5, 60.0, 300.0])
def test_survival_curve_is_the_variation_model(p95):
    curve = planner.survival_curve(p95)
    assert curve[0] == 1.0
    assert np.all(np.diff(curve) <= 1e-12)
    assert curve[-1] >= planner.SURVIVAL_CUTOFF and ref_survival(p95, len(curve)) < planner.SURVIVAL_CUTOFF
    for k in range(len(curve)):
        assert curve[k] == pytest.approx(ref_survival(p95, k), abs=1e-4)
    # ... and the chance sample_variation's runs (max(1, ceil(draw))) still run at second k.
    rng = np.random.default_rng(5)
    draws = np.maximum(1, np.ceil(p95 / planner.P95_OVER_MEDIAN
                                  * np.exp(planner.LOGNORMAL_SIGMA * rng.standard_normal(200_000)) - 1e-9))
    for k in range(len(curve)):
        assert (draws > k).mean() == pytest.approx(curve[k], abs=0.005)
    if float(p95).is_integer():  # 5 % of the runs outlast their p95
        assert curve[int(p95)] == pytest.approx(0.05, abs=1e-3)


def test_survival_engine_holds_the_expected_load_of_its_placements():
    """The engine's incremental loads (folds, pending patterns, removals) equal the expected
    load of the final offsets summed run by run."""
    jobs, peer = small_workload(3, n=16)
    model = planner._Model(jobs, peer, DAY)
    model.use_survival(0.0, np.ones(2))  # expected load only (no variance term): what the reference sums
    scales = np.tile([20.0, 8000.0], (model.n_arrays, 1))  # realistic sizes: the soft-peak terms stay finite
    eng = planner._Engine(model, scales, "balanced", 20.0)
    fixed = planner._fixed_load(model)
    for a in range(model.n_arrays):
        eng.add_fixed(fixed[a], a)
    rng = np.random.default_rng(0)
    offsets = [c.offset0 if c.fixed else 0 for c in model.jobs]
    for j in sorted(range(len(jobs)), key=lambda j: model.jobs[j].period):
        c = model.jobs[j]
        if c.fixed:
            continue
        eng.enter(c.period)
        eng.place(j, 0)
        eng.place(j, 0, -1.0)  # removal is exact
        offsets[j] = int(c.base + rng.integers(c.window))
        eng.place(j, offsets[j])
    X = eng.sync()
    runs, mem = ref_expected_load(jobs, offsets, peer)
    np.testing.assert_allclose(X[0, 0], runs, atol=1e-6)
    np.testing.assert_allclose(X[0, 1], mem, rtol=1e-9, atol=1e-4)


@pytest.mark.parametrize("seed", [1, 2])
def test_survival_model_lowers_the_expected_and_the_sampled_peaks(seed):
    """80 jobs in one slot, mostly at minute 0: the survival plan's expected load (summed
    run by run above, not the engine's) peaks at least 5 % lower than the p95 plan's, and
    so do its peaks under sampled durations (the same draws for both plans)."""
    rng = np.random.default_rng(seed)
    crons = ["0 * * * *", "0 * * * *", "*/15 * * * *", "0 2 * * *"]
    jobs = [PlanJob(name=f"j{i}", cron=crons[i % 4], duration_s=float(np.clip(rng.lognormal(3, 0.9), 2, 240)),
                    memory_mb=float(rng.integers(50, 1500))) for i in range(80)]
    box = planner.optimize(jobs, day=DAY)
    surv = planner.optimize(jobs, day=DAY, load_model="survival")
    box_runs, box_mem = ref_expected_load(jobs, box.offsets)
    surv_runs, surv_mem = ref_expected_load(jobs, surv.offsets)
    assert surv_runs.max() <= 0.95 * box_runs.max()
    assert surv_mem.max() <= 0.95 * box_mem.max()
    vb = planner.sample_variation(jobs, [], box.offsets, np.random.default_rng(1), 5, day=DAY, lagrangian_s=0)
    vs = planner.sample_variation(jobs, [], surv.offsets, np.random.default_rng(1), 5, day=DAY, lagrangian_s=0)
    assert np.mean(vs.peak_jobs) < np.mean(vb.peak_jobs)
    assert np.mean(vs.peak_memory_mb) <= 1.02 * np.mean(vb.peak_memory_mb)  # close on one seed


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_lower_bound_never_exceeds_any_plan(seed):
    jobs, peer = small_workload(seed, n=30)
    bound = planner.lower_bound(jobs, peer, day=DAY)
    plan = planner.optimize(jobs, peer, day=DAY)
    rng = np.random.default_rng(seed)
    tries = [plan.offsets, [j.wait_seconds for j in jobs]]
    tries += [[j.wait_seconds if j.pinned else int(rng.integers(0, min(j.window_s, j.interval_s or 60)))
               for j in jobs] for _ in range(3)]
    for offsets in tries:
        prof = planner.simulate(jobs, offsets, peer=peer, day=DAY)
        assert bound.peak_jobs <= prof.peak_jobs
        assert bound.peak_memory_mb <= prof.peak_memory_mb + 1e-6
        for slot, (bj, bm) in bound.slots.items():
            assert bj <= prof.slots[slot][0].max()
            assert bm <= prof.slots[slot][1].max() + 1e-6


def tiny_workload(seed: int) -> tuple[list[PlanJob], list[PlanJob]]:
    """Five movable jobs with narrow windows (few enough combinations to try them all), all
    ticking at 03:00 (periodic ones elsewhere too), a pinned job and a peer job."""
    rng = np.random.default_rng(seed)
    specs = [dict(cron="*/15 * * * *"), dict(cron="0 * * * *"), dict(cron="0 3 * * *"), dict(interval_s=120),
             dict(cron="* * * * *")]
    jobs = []
    for i, spec in enumerate(specs):
        jobs.append(PlanJob(name=f"t{i}", duration_s=float(rng.integers(1, 9)), memory_mb=float(rng.integers(50, 900)),
                            window_s=int(rng.integers(3, 6)), slot=["a", "b"][i % 2], **spec))
    jobs.append(PlanJob(name="pin", cron="0 3 * * *", wait_seconds=int(rng.integers(0, 5)),
                        duration_s=float(rng.integers(2, 8)), memory_mb=300.0, slot="a", pinned=True))
    peer = [PlanJob(name="peer", cron="*/30 * * * *", wait_seconds=int(rng.integers(0, 5)),
                    duration_s=float(rng.integers(2, 8)), memory_mb=400.0)]
    return jobs, peer


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_lower_bound_is_below_the_brute_force_optimum(seed):
    """Every combination of offsets on a tiny instance, each load's own optimum found by
    brute force with the independent simulator: the bound (energetic and Lagrangian) never
    exceeds it, in total and per slot."""
    import itertools

    jobs, peer = tiny_workload(seed)
    # One load vector per (job, offset) from the reference simulator; loads add up.
    fixed = ref_simulate([j for j in jobs if j.pinned], [j.wait_seconds for j in jobs if j.pinned], peer)
    choices = []
    for j in jobs:
        if j.pinned:
            continue
        window = min(j.window_s, j.interval_s or j.window_s)
        choices.append([ref_simulate([j], [o]) for o in range(window)])
    slots = sorted({j.slot for j in jobs})

    def stack(sim):
        runs, mem, per_slot = sim
        rows = [runs, mem]
        for s in slots:
            sj, sm = per_slot.get(s, (np.zeros(86400), np.zeros(86400)))
            rows += [sj, sm]
        return np.array(rows, dtype=float)

    base = stack(fixed)
    options = [[stack(sim) for sim in opts] for opts in choices]
    best = np.full(base.shape[0], np.inf)
    for combo in itertools.product(*[range(len(o)) for o in options]):
        load = base + sum(options[k][c] for k, c in enumerate(combo))
        best = np.minimum(best, load.max(axis=1))
    bound = planner.lower_bound(jobs, peer, day=DAY, lagrangian_s=5.0)
    got = [bound.peak_jobs, bound.peak_memory_mb]
    for s in slots:
        got += list(bound.slots[s])
    assert all(g <= b + 1e-6 for g, b in zip(got, best, strict=True)), (got, best.tolist())
    # Not vacuous: the total run count is met exactly here.
    assert got[0] == best[0]
    plan = planner.optimize(jobs, peer, day=DAY)
    assert plan.after.peak_jobs >= best[0] and plan.after.peak_memory_mb >= best[1] - 1e-6


def daily(name, dur, mem, window=60, **kw):
    return PlanJob(name=name, cron="0 3 * * *", duration_s=dur, memory_mb=mem, window_s=window, **kw)


@pytest.mark.parametrize(("jobs", "peak_jobs", "peak_mem"), [
    # Short runs fit one after the other inside the minute: one at a time.
    ([daily("a", 10, 100), daily("b", 10, 300), daily("c", 10, 200)], 1, 300),
    # Runs at least as long as their window are all running at tick + window - 1.
    ([daily("a", 100, 100), daily("b", 100, 300)], 2, 400),
    ([daily(f"x{i}", 30, 50, window=30) for i in range(4)], 4, 200),
    # Six 20 s runs in a 60 s window: 120 run-seconds in [0, 79) -> at least 2; 2 is reachable.
    ([daily(f"y{i}", 20, 0) for i in range(6)], 2, 0),
])
def test_lower_bound_is_reached_on_hand_computed_cases(jobs, peak_jobs, peak_mem):
    bound = planner.lower_bound(jobs, day=DAY)
    plan = planner.optimize(jobs, day=DAY)
    assert (bound.peak_jobs, bound.peak_memory_mb) == (peak_jobs, pytest.approx(peak_mem))
    assert (plan.after.peak_jobs, plan.after.peak_memory_mb) == (peak_jobs, pytest.approx(peak_mem))


def test_peer_load_is_fixed_and_counted_in_the_total_only():
    peer = [PlanJob(name="p", cron="0 3 * * *", wait_seconds=0, duration_s=60, memory_mb=1000)]
    jobs = [daily("a", 10, 100)]
    bound = planner.lower_bound(jobs, peer, day=DAY)
    plan = planner.optimize(jobs, peer, day=DAY)
    assert bound.peak_memory_mb == pytest.approx(1100)  # the peer covers the whole window
    assert plan.after.peak_memory_mb == pytest.approx(1100)
    assert plan.after.slots["default"][1].max() == pytest.approx(100)
    assert plan.peer.peak_memory_mb == pytest.approx(1000)


# --- exact polishing (CP-SAT, optional dependency) -----------------------------------------
needs_cpsat = pytest.mark.skipif(planner._cpsat_module() is None, reason="OR-Tools is not installed")
# Every phase bounded by counts, not by CPU time: the same input gives the same plan anywhere.
COUNTED = {"lagrangian_s": 0.0, "ils_total_s": 0, "ils_min_s": 0, "rr_share": 1000.0, "exact": True,
           "exact_total_s": 1000.0, "exact_rounds": 3, "exact_round_s": 1000.0, "exact_round_dt": 0.5}


def crowded_0200() -> list[PlanJob]:
    """Six 12 s daily jobs at 02:00 with windows of 60 s, one of them pinned at :00: 72 s of
    work for starts in 0-59 (ends by 71 s), so some second carries two runs: optimum 2 runs,
    and 500 MB (the largest job alone) if only the two lightest overlap."""
    jobs = [PlanJob(name=f"d{i}", cron="0 2 * * *", duration_s=12, memory_mb=100.0 * (i + 1),
                    slot=("a", "b")[i % 2]) for i in range(5)]
    return jobs + [PlanJob(name="pin", cron="0 2 * * *", duration_s=12, memory_mb=50.0, slot="a", pinned=True)]


@needs_cpsat
def test_exact_phase_reaches_the_proven_optimum_from_the_worst_start():
    jobs = crowded_0200()
    model = planner._Model(jobs, [], DAY)
    bound = planner._bounds(model, lagrangian_s=0.2)
    assert (bound[0, 0], bound[0, 1]) == (2, pytest.approx(500))  # energetic 72/71 s; the largest job
    start = np.zeros(len(jobs), dtype=np.int64)  # everything at :00: 6 runs, 1,550 MB
    offsets, stats = planner._exact_polish(planner._cpsat_module(), model, bound, bound, start, "balanced",
                                           {"exact_rounds": 2, "exact_round_s": 1000.0, "exact_round_dt": 5.0},
                                           time.process_time() + 120)
    assert stats["exact_improved"] >= 1
    assert offsets[-1] == 0 and all(0 <= o < 60 for o in offsets)  # the pinned job stays
    runs, mem, _ = ref_simulate(jobs, [int(o) for o in offsets])
    assert (runs.max(), mem.max()) == (2, pytest.approx(500))  # equal to the bound: optimal


@needs_cpsat
@pytest.mark.parametrize("seed", [1, 2])
def test_exact_phase_keeps_pins_and_windows_and_is_deterministic(seed):
    jobs, peer = small_workload(seed, n=40)
    plan = planner.optimize(jobs, peer, day=DAY, time_budget_s=120, tune=COUNTED)
    assert plan.stats["exact"] == "on" and plan.stats["exact_rounds"] >= 1
    for job, offset in zip(jobs, plan.offsets, strict=True):
        if job.pinned:
            assert offset == job.wait_seconds % (job.interval_s or 10**9)
        else:
            assert 0 <= offset < min(job.window_s, job.interval_s or job.window_s)
    runs, mem, slots = ref_simulate(jobs, plan.offsets, peer)
    assert plan.after.peak_jobs == runs.max()
    assert plan.after.peak_memory_mb == pytest.approx(mem.max())
    for slot, (sj, sm) in slots.items():
        assert plan.after.slots[slot][0].max() == sj.max()
        assert plan.after.slots[slot][1].max() == pytest.approx(sm.max())
    again = planner.optimize(jobs, peer, day=DAY, time_budget_s=120, tune=COUNTED)
    assert again.offsets == plan.offsets


@needs_cpsat
@pytest.mark.parametrize("seed", [3, 5])
def test_exact_phase_only_keeps_improvements(seed):
    jobs, peer = small_workload(seed, n=40)
    without = planner.optimize(jobs, peer, day=DAY, time_budget_s=120, tune={**COUNTED, "exact": False})
    with_exact = planner.optimize(jobs, peer, day=DAY, time_budget_s=120, tune=COUNTED)
    model = planner._Model(jobs, peer, DAY)
    bound = planner._bounds(model, lagrangian_s=0.0)
    inv = 1.0 / np.where(bound > 0, bound, 1.0)

    def key(offsets):
        return planner._objective_key(planner._load_arrays(model, np.array(offsets)), inv, "balanced")

    # Phases 1-4 are the same (all counted); the exact phase keeps only plans that score better.
    assert key(with_exact.offsets) <= key(without.offsets)
    assert (key(with_exact.offsets) < key(without.offsets)) == (with_exact.stats["exact_improved"] > 0)


def test_planner_falls_back_to_the_local_search_without_or_tools(monkeypatch):
    monkeypatch.setattr(planner, "_cpsat_module", lambda: None)
    jobs, peer = small_workload(4, n=30)
    plan = planner.optimize(jobs, peer, day=DAY, tune={"exact": True})
    assert plan.stats["exact"] == "unavailable" and "exact_rounds" not in plan.stats
    assert plan.stats["ils_rounds"] > 0  # the randomised search had the whole budget
    runs, mem, _ = ref_simulate(jobs, plan.offsets, peer)
    assert plan.after.peak_jobs == runs.max() <= plan.before.peak_jobs
    off = planner.optimize(jobs, peer, day=DAY, tune={"ils_total_s": 0, "ils_min_s": 0})
    assert off.stats["exact"] == "off"  # the default


def test_exact_phase_is_skipped_when_the_budget_has_no_room_for_it():
    jobs, peer = small_workload(4, n=30)
    plan = planner.optimize(jobs, peer, day=DAY, tune={"exact": True, "exact_total_s": 0.01, "ils_total_s": 0,
                                                       "ils_min_s": 0})
    assert plan.stats["exact"] == "no time" and "exact_rounds" not in plan.stats


def test_cron_ticks_follow_croniter_in_a_timezone():
    job = PlanJob(name="tz", cron="30 2,14 * * *", tz="Europe/Paris", duration_s=5)
    ticks = planner._cron_ticks(job.cron, job.tz, DAY).tolist()
    assert ticks == ref_ticks(job) == [1 * 3600 + 1800, 13 * 3600 + 1800]  # UTC+1 in January


def test_sample_variation_is_reproducible_and_bounded():
    jobs, peer = small_workload(7)
    plan = planner.optimize(jobs, peer, day=DAY)
    a = planner.sample_variation(jobs, peer, plan.offsets, np.random.default_rng(5), 2, day=DAY)
    b = planner.sample_variation(jobs, peer, plan.offsets, np.random.default_rng(5), 2, day=DAY)
    assert a.peak_jobs == b.peak_jobs and a.peak_memory_mb == b.peak_memory_mb
    assert all(p >= bnd for p, bnd in zip(a.peak_jobs, a.bound_jobs, strict=True))
    assert all(p >= bnd - 1e-6 for p, bnd in zip(a.peak_memory_mb, a.bound_memory_mb, strict=True))
    assert a.ratio_jobs >= 1 and a.ratio_memory >= 1


def test_svg_plot_is_well_formed(tmp_path):
    jobs, peer = small_workload(2)
    plan = planner.optimize(jobs, peer, day=DAY)
    path = planner.svg_plot(plan.before, plan.after, plan.peer, tmp_path / "load.svg")
    root = ET.parse(path).getroot()
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "Concurrent runs" in texts and "Concurrent memory" in texts
    assert "dashed" in texts and "dotted" in texts and "12:00" in texts
    assert len(list(root.iter("{http://www.w3.org/2000/svg}polyline"))) == 6


# --- the command ------------------------------------------------------------------------
def write(tmp_path, data) -> str:
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


EXAMPLE = {
    "jobs": [
        {"name": "a", "cron": "0 */4 * * *", "wait_seconds": 0, "window_s": 60, "duration_s": 25, "memory_mb": 600,
         "slot": "default", "pinned": False},
        {"name": "b", "interval_s": 30, "wait_seconds": 0, "duration_s": 10, "memory_mb": 100},
        {"name": "c", "cron": "0 * * * *", "duration_s": 40, "memory_mb": 300, "slot": "heavy"},
        {"name": "d", "cron": "0 * * * *", "wait_seconds": 5, "duration_s": 40, "memory_mb": 300, "slot": "heavy",
         "pinned": True},
    ],
    "peer": [{"name": "x", "cron": "15 4 * * *", "wait_seconds": 0, "duration_s": 45, "memory_mb": 300}],
}


def test_command_json_contract(tmp_path):
    out = io.StringIO()
    svg = tmp_path / "plan.svg"
    call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--json", "--date", "2025-01-15",
                 "--plot", str(svg), stdout=out)
    data = json.loads(out.getvalue())
    assert [j["name"] for j in data["jobs"]] == ["a", "b", "c", "d"]
    for row in data["jobs"]:
        assert {"wait_seconds", "offset_s", "moved", "slot", "pinned"} <= set(row)
        assert row["wait_seconds"] == row["offset_s"] % 60
    d = next(j for j in data["jobs"] if j["name"] == "d")
    assert (d["offset_s"], d["moved"]) == (5, False)
    for key in ("before", "after", "lower_bound"):
        assert {"peak_jobs", "peak_memory_mb", "slots"} <= set(data[key])
        assert set(data[key]["slots"]) == {"default", "heavy"}
    assert {"variation", "ratio_to_bound"} <= set(data["after"])
    assert data["lower_bound"]["peak_jobs"] <= data["after"]["peak_jobs"] <= data["before"]["peak_jobs"]
    assert data["lower_bound"]["peak_memory_mb"] <= data["after"]["peak_memory_mb"]
    # The figures are those of an independent simulation of the reported offsets.
    jobs = [PlanJob(**{k: v for k, v in j.items()}) for j in EXAMPLE["jobs"]]
    peer = [PlanJob(**p) for p in EXAMPLE["peer"]]
    runs, mem, _ = ref_simulate(jobs, [j["offset_s"] for j in data["jobs"]], peer)
    assert data["after"]["peak_jobs"] == runs.max()
    assert data["after"]["peak_memory_mb"] == pytest.approx(mem.max())
    assert svg.read_text().startswith("<svg")


def test_command_text_report(tmp_path):
    out = io.StringIO()
    call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--samples", "0", stdout=out)
    text = out.getvalue()
    assert "lower bound" in text and "Moves (" in text and "runs/bound" in text


def test_command_exact_phase_is_opt_in(tmp_path, monkeypatch):
    out = io.StringIO()
    call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--samples", "0", "--json", stdout=out)
    assert json.loads(out.getvalue())["stats"]["exact"] == "off"
    monkeypatch.setattr(planner, "_cpsat_module", lambda: None)
    with pytest.raises(CommandError, match="--exact needs OR-Tools: pip install ortools"):
        call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--exact", stdout=io.StringIO())


def test_command_survival_load_model(tmp_path):
    out = io.StringIO()
    call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--samples", "1", "--json",
                 "--load-model", "survival", stdout=out)
    data = json.loads(out.getvalue())
    assert data["load_model"] == "survival"
    d = next(j for j in data["jobs"] if j["name"] == "d")
    assert (d["offset_s"], d["moved"]) == (5, False)  # pinned
    jobs = [PlanJob(**{k: v for k, v in j.items()}) for j in EXAMPLE["jobs"]]
    peer = [PlanJob(**p) for p in EXAMPLE["peer"]]
    runs, _, _ = ref_simulate(jobs, [j["offset_s"] for j in data["jobs"]], peer)
    assert data["after"]["peak_jobs"] == runs.max()  # reported as p95 boxes, like every plan
    text = io.StringIO()
    call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--samples", "0",
                 "--load-model", "survival", stdout=text)
    assert "load model survival" in text.getvalue()
    with pytest.raises(CommandError, match="--exact works on the p95 load model only"):
        call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--exact", "--load-model",
                     "survival", stdout=io.StringIO())


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["jobs"][0].pop("duration_s"), "jobs[0] ('a'): missing required field 'duration_s'"),
    (lambda d: d["jobs"][1].update(duration_s=-1), "jobs[1] ('b'): field 'duration_s' must not be negative"),
    (lambda d: d["jobs"][0].update(cron="61 * * * *"), "jobs[0] ('a'): field 'cron': minute field"),
    (lambda d: d["jobs"][0].update(cron="0 0 * * * *"), "6 fields given"),
    (lambda d: d["jobs"][0].update(window_s=0), "jobs[0] ('a'): field 'window_s' must be between 1 and 3600"),
    (lambda d: d["jobs"][1].update(window_s=120), "jobs[1] ('b'): field 'window_s' must be between 1 and 60"),
    (lambda d: d["jobs"][2].update(memory_mb="lots"), "jobs[2] ('c'): field 'memory_mb' must be a finite number"),
    (lambda d: d["jobs"][2].update(wait_seconds=1.5), "field 'wait_seconds' must be an integer"),
    (lambda d: d["jobs"][2].update(wait_seconds=60), "field 'wait_seconds' must be between 0 and 59"),
    (lambda d: d["jobs"][2].update(pinned="yes"), "field 'pinned' must be true or false"),
    (lambda d: d["jobs"][2].update(colour="red"), "jobs[2] ('c'): unknown field(s) colour"),
    (lambda d: d["jobs"][2].update(interval_s=60), "give exactly one of 'cron' and 'interval_s'"),
    (lambda d: d["jobs"][1].update(wait_seconds=30), "field 'wait_seconds' (30) must be below interval_s (30)"),
    (lambda d: d["jobs"][1].update(interval_s=2), "field 'interval_s' must be between 5"),
    (lambda d: d["jobs"][3].update(tz="Mars/Olympus"), "field 'tz': unknown timezone"),
    (lambda d: d["jobs"][3].update(name="a"), "jobs[3] ('a'): duplicate name"),
    (lambda d: d["peer"][0].update(memory_mb=None), "peer[0] ('x'): field 'memory_mb' must be a finite number"),
    (lambda d: d.update(extra=[]), "unknown top-level field(s) extra"),
    (lambda d: d.pop("jobs"), "missing required top-level field 'jobs'"),
    (lambda d: d.update(jobs={}), "'jobs' must be a list"),
    (lambda d: d["jobs"].append(7), "jobs[4]: must be an object"),
])
def test_command_rejects_bad_input(tmp_path, mutate, message):
    data = json.loads(json.dumps(EXAMPLE))
    mutate(data)
    with pytest.raises(CommandError) as exc:
        call_command("optimize_schedule", "--input", write(tmp_path, data), stdout=io.StringIO())
    assert message in str(exc.value)


def test_command_rejects_unreadable_files_and_apply_on_files(tmp_path):
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("optimize_schedule", "--input", write(tmp_path, "{nope"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="file not found"):
        call_command("optimize_schedule", "--input", str(tmp_path / "missing.json"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="--apply only works on database jobs"):
        call_command("optimize_schedule", "--input", write(tmp_path, EXAMPLE), "--apply", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_command_plans_and_applies_database_jobs(make_job):
    from jobs.models import Job

    for i in range(4):
        make_job(f"hourly-{i}", schedule_type="cron", cron_expression="0 * * * *", expected_duration_s=20,
                 expected_memory_mb=200)
    make_job("fixed", schedule_type="cron", cron_expression="0 * * * *", expected_duration_s=20,
             expected_memory_mb=200, pinned=True, wait_seconds=0)
    make_job("ticker", schedule_type="interval", interval_seconds=30, expected_duration_s=5)
    make_job("off", schedule_type="cron", cron_expression="0 * * * *", enabled=False)

    out = io.StringIO()
    call_command("optimize_schedule", "--json", "--apply", "--samples", "0", stdout=out)
    data = json.loads(out.getvalue())
    assert sorted(j["name"] for j in data["jobs"]) == ["fixed", "hourly-0", "hourly-1", "hourly-2", "hourly-3",
                                                       "ticker"]
    assert data["applied"] == data["moves"] > 0
    assert data["after"]["peak_jobs"] < data["before"]["peak_jobs"]
    planned = {j["name"]: j["wait_seconds"] for j in data["jobs"]}
    for job in Job.objects.filter(name__in=planned):
        assert job.wait_seconds == planned[job.name]
    assert Job.objects.get(name="fixed").wait_seconds == 0
    assert Job.objects.get(name="ticker").wait_seconds < 30
    # A second run finds nothing left to move.
    out = io.StringIO()
    call_command("optimize_schedule", "--json", "--samples", "0", stdout=out)
    assert json.loads(out.getvalue())["moves"] == 0
