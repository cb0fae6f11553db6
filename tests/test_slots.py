"""Execution slots end to end: real Redis, real Celery workers, real processes killed for real.

Concurrency is observed from the scripts' side: each script appends ``start``, ``alive``
(every 0.2 s) and ``end`` records with its run id and a timestamp to a file, so even a
script whose worker was SIGKILLed (no ``end``) shows how long it really lived.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Job, JobDependency, JobRun, RunState
from jobs.reconcile import reconcile_once
from slots import procs
from slots.leases import LeaseStore
from slots.models import ExecutionSlot
from tests.conftest import pids_alive
from tests.helpers import wait_for

pytestmark = [pytest.mark.workers, pytest.mark.django_db(transaction=True)]

TICK = 0.2
# $1: record file, $2: number of 0.2 s ticks; with a marker file $3, only the first run is long.
TICK_SCRIPT = """#!/bin/bash
rec="$1"; n="$2"
if [ -n "$3" ]; then if [ -e "$3" ]; then n=2; else touch "$3"; fi; fi
echo "start $SMARTCRON_RUN_ID $EPOCHREALTIME" >> "$rec"
for ((i=0; i<n; i++)); do sleep 0.2; echo "alive $SMARTCRON_RUN_ID $EPOCHREALTIME" >> "$rec"; done
echo "end $SMARTCRON_RUN_ID $EPOCHREALTIME" >> "$rec"
"""


# --- helpers -----------------------------------------------------------------------------------
def lifetimes(rec: Path) -> dict[int, tuple[float, float]]:
    """run id -> (first record, last sign of life) from a record file."""
    seen: dict[int, list[float]] = {}
    ended: set[int] = set()
    if not rec.exists():
        return {}
    for line in rec.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        kind, run_id, ts = parts[0], int(parts[1]), float(parts[2])
        seen.setdefault(run_id, []).append(ts)
        if kind == "end":
            ended.add(run_id)
    # Without an ``end`` the script was killed: it lived at most one tick past its last record.
    return {rid: (min(ts), max(ts) + (0 if rid in ended else TICK)) for rid, ts in seen.items()}


def max_overlap(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def final_run(run_id: int, timeout: float = 60) -> JobRun:
    def done():
        run = JobRun.objects.get(pk=run_id)
        return run if run.is_final else None

    return wait_for(done, timeout, 0.1, f"run {run_id} to finish")


def all_final(run_ids, timeout: float = 60) -> list[JobRun]:
    def done():
        runs = list(JobRun.objects.filter(pk__in=list(run_ids)))
        return runs if all(r.is_final for r in runs) else None

    return wait_for(done, timeout, 0.2, "runs to finish")


def ticker(make_job, name: str, rec: Path, ticks: int, slot: ExecutionSlot | None = None, marker: Path | None = None,
           **fields) -> Job:
    job = make_job(name, TICK_SCRIPT, args=f"{rec} {ticks} {marker or ''}".strip(), **fields)
    if slot is not None:
        Job.objects.filter(pk=job.pk).update(slot=slot)
        job.refresh_from_db()
    return job


def make_slot(name: str, max_concurrent: int, memory_budget_mb: int = 100_000, cpu_percent: int = 100) -> ExecutionSlot:
    return ExecutionSlot.objects.create(name=name, max_concurrent=max_concurrent, memory_budget_mb=memory_budget_mb,
                                        cpu_percent=cpu_percent)


def run_at(job: Job, planned: dt.datetime) -> JobRun:
    run, _ = services.create_run(job, planned)
    services.dispatch(run)
    return run


def soon(offset: float = 1.5) -> dt.datetime:
    return (timezone.now() + dt.timedelta(seconds=offset)).replace(microsecond=0) + dt.timedelta(seconds=1)


def start_all(*started) -> None:
    for w in started:
        w.wait_ready()


def leases_free(*slots: str) -> bool:
    store = LeaseStore()
    return all(not store.usage(s).holders and not store.waiting(s) for s in slots)


# --- concurrency --------------------------------------------------------------------------------
def test_six_due_at_once_into_a_five_job_slot(make_job, workers, scripts_root):
    rec = scripts_root / "six.rec"
    # The slot worker could run 10 at once: the lease set is what holds the limit.
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("default", ["default"], 10))
    jobs = [ticker(make_job, f"six-{i}", rec, 10) for i in range(6)]
    planned = soon()
    runs = [run_at(j, planned) for j in jobs]
    done = all_final([r.pk for r in runs])
    assert {r.state for r in done} == {RunState.SUCCEEDED}, [r.error for r in done]
    spans = lifetimes(rec)
    assert max_overlap(spans.values()) == 5
    starts = sorted(spans.values())
    sixth = starts[-1][0]
    first_end = min(e for _, e in starts[:5])
    # The sixth waited (stayed QUEUED, not dropped) and started as soon as a place was free.
    assert sixth >= first_end - 0.05
    assert sixth - first_end < 2.5, f"sixth started {sixth - first_end:.2f} s after the first end"
    assert leases_free("default")


@pytest.mark.slow
def test_fifty_jobs_three_slots_two_workers_with_sigkills(make_job, workers, scripts_root):
    limits = {"c1": 2, "c2": 3, "c3": 4}
    slots = {name: make_slot(name, n) for name, n in limits.items()}
    queues = list(limits)
    rng = random.Random(7)
    start_all(workers.start("dispatch", ["dispatch"], 8),
              workers.start("slot-a", queues, 12, SMARTCRON_ORPHAN_SCAN_SECONDS="0.3"),
              workers.start("slot-b", queues, 12, SMARTCRON_ORPHAN_SCAN_SECONDS="0.3"))
    slot_workers = {"slot-a": workers.workers[1], "slot-b": workers.workers[2]}
    runs = []
    base = timezone.now() + dt.timedelta(seconds=1)
    for i in range(50):
        name = rng.choice(queues)
        job = ticker(make_job, f"chaos-{i}", scripts_root / f"chaos-{name}.rec", rng.randint(2, 12), slots[name],
                     priority=rng.choice(["critical", "high", "medium", "low"]), max_retries=1,
                     retry_backoff_seconds=1)
        runs.append(run_at(job, base + dt.timedelta(seconds=rng.uniform(0, 10))))
    deadline = time.monotonic() + 80
    next_kill = time.monotonic() + 3
    kills = 0
    while time.monotonic() < deadline:
        reconcile_once()  # the periodic reconciler, run from here every 0.5 s
        if time.monotonic() >= next_kill and kills < 4:
            name = rng.choice(sorted(slot_workers))
            slot_workers[name].kill(signal.SIGKILL)
            slot_workers[name] = workers.start(f"{name}-{kills}", queues, 12, SMARTCRON_ORPHAN_SCAN_SECONDS="0.3")
            kills += 1
            next_kill = time.monotonic() + rng.uniform(3, 6)
        every = list(JobRun.objects.filter(job__name__startswith="chaos-"))
        if kills >= 4 and all(r.is_final for r in every):
            break
        time.sleep(0.5)
    every = list(JobRun.objects.filter(job__name__startswith="chaos-"))
    assert all(r.is_final for r in every), [(r.pk, r.state) for r in every if not r.is_final]
    assert kills == 4
    for name, limit in limits.items():
        observed = max_overlap(lifetimes(scripts_root / f"chaos-{name}.rec").values())
        assert 1 <= observed <= limit, f"slot {name}: {observed} at once, limit {limit}"
    wait_for(lambda: leases_free(*limits), 10, message="every lease to be free")
    assert not procs.tagged_processes()
    states = {r.state for r in every}
    assert states <= {RunState.SUCCEEDED, RunState.LOST}, states
    print(f"chaos: {len(every)} runs, {sum(r.state == RunState.LOST for r in every)} lost, "
          f"{sum(r.attempt == 2 for r in every)} retries, {kills} SIGKILLs")
    # Each tick of the 50 has a row; a LOST one was retried at most once.
    assert JobRun.objects.filter(job__name__startswith="chaos-", trigger="schedule").count() == 50
    assert all(r.attempt <= 2 for r in every)


# --- crashes ----------------------------------------------------------------------------------
def test_kill_9_a_worker_mid_run(make_job, workers, scripts_root, settings):
    rec = scripts_root / "k9.rec"
    job = ticker(make_job, "k9", rec, 300, marker=scripts_root / "k9.first", max_retries=1, retry_backoff_seconds=1)
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("doomed", ["default"], 5))
    run, _ = services.run_now(job)
    run = wait_for(lambda: JobRun.objects.filter(pk=run.pk, state=RunState.RUNNING, pid__isnull=False).first(), 30)
    wait_for(lambda: run.pk in lifetimes(rec), 10, message="the script to run")
    workers.workers[1].kill(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = workers.start("survivor", ["default"], 5)
    store = LeaseStore()

    def lost():
        reconcile_once()
        r = JobRun.objects.get(pk=run.pk)
        return r if r.state == RunState.LOST else None

    lost_run = wait_for(lost, 20, 0.25, "the run to be LOST")
    reclaimed_after = time.monotonic() - killed_at
    assert reclaimed_after < settings.LEASE_TTL_SECONDS + 3, f"reclaimed after {reclaimed_after:.1f} s"
    assert "lease expired" in lost_run.error or "no live lease" in lost_run.error
    assert not store.holds("default", run.pk)
    assert pids_alive([run.pid]) == []
    survivor.wait_ready()
    retry = wait_for(lambda: JobRun.objects.filter(retry_of=run.pk).first(), 20, message="the retry")
    retry = final_run(retry.pk)
    assert (retry.state, retry.attempt, retry.trigger) == (RunState.SUCCEEDED, 2, JobRun.Trigger.RETRY)
    spans = lifetimes(rec)
    # Never two copies alive: the lost one was dead before its retry started.
    assert spans[run.pk][1] <= spans[retry.pk][0]
    assert JobRun.objects.filter(job=job).count() == 2  # retried once, per policy


def test_a_paused_holder_cannot_complete_late_and_its_child_is_gone(make_job, workers, scripts_root):
    rec = scripts_root / "late.rec"
    job = ticker(make_job, "late", rec, 40)
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("sleepy", ["default"], 5))
    worker = workers.workers[1]
    run, _ = services.run_now(job)
    run = wait_for(lambda: JobRun.objects.filter(pk=run.pk, state=RunState.RUNNING, pid__isnull=False).first(), 30)
    child = run.pid
    worker.kill(signal.SIGSTOP)  # a paused (or partitioned) holder: no more heartbeats
    try:
        time.sleep(4.5)  # past the 3 s lease
        assert pids_alive([child]) == [child]  # the script itself kept running meanwhile
        result = reconcile_once()
        assert result["reclaimed"] == 1
    finally:
        worker.kill(signal.SIGCONT)
    lost = JobRun.objects.get(pk=run.pk)
    assert lost.state == RunState.LOST
    wait_for(lambda: "late completion refused" in worker.output(), 20, message="the late worker to be fenced")
    after = JobRun.objects.get(pk=run.pk)
    assert (after.state, after.error, after.exit_code, after.finished_at) == (
        RunState.LOST, lost.error, None, lost.finished_at)
    assert pids_alive([child]) == []
    assert not LeaseStore().holds("default", run.pk)


# --- budgets, overlap, dependencies, priority ---------------------------------------------------
MEMORY_SCRIPT = """#!/usr/bin/env python3
import os, sys, time
rec, mb = sys.argv[1], int(sys.argv[2])
def log(kind):
    with open(rec, "a") as fh:
        fh.write(f"{kind} {os.environ['SMARTCRON_RUN_ID']} {time.time()}\\n")
log("start")
block = bytearray(mb * 1024 * 1024)
block[::4096] = b"x" * len(block[::4096])
for _ in range(10):
    time.sleep(0.2)
    log("alive")
log("end")
"""


def test_memory_budget_serializes_jobs_and_measured_rss_stays_inside(make_job, workers, scripts_root):
    slot = make_slot("mem", 5, memory_budget_mb=300)
    rec = scripts_root / "mem.rec"
    jobs = []
    for i in range(4):
        job = make_job(f"mem-{i}", MEMORY_SCRIPT, args=f"{rec} 100", expected_memory_mb=140)
        Job.objects.filter(pk=job.pk).update(slot=slot)
        jobs.append(job)
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("mem", ["mem"], 5))
    peak = {"rss": 0.0, "seen": 0}
    stop = threading.Event()
    install = procs.install_id()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for t in procs.tagged_processes(install):
                try:
                    total += psutil.Process(t.pid).memory_info().rss
                except psutil.Error:
                    pass
            peak["rss"] = max(peak["rss"], total / 2**20)
            peak["seen"] += 1
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        planned = soon()
        runs = [run_at(Job.objects.get(pk=j.pk), planned) for j in jobs]
        done = all_final([r.pk for r in runs], 90)
    finally:
        stop.set()
        sampler.join(5)
    assert {r.state for r in done} == {RunState.SUCCEEDED}, [r.error for r in done]
    # 2 x 140 MB expected fit in 300 MB, 3 do not: two at a time.
    assert max_overlap(lifetimes(rec).values()) == 2
    assert 150 < peak["rss"] <= 300, f"summed RSS peaked at {peak['rss']:.0f} MB"
    assert all(r.peak_memory_mb > 90 for r in done)


def test_overlap_policies(make_job, workers, scripts_root):
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("default", ["default"], 10))
    forbid = ticker(make_job, "ov-forbid", scripts_root / "forbid.rec", 15, overlap_policy="forbid")
    queue = ticker(make_job, "ov-queue", scripts_root / "queue.rec", 12, overlap_policy="queue")
    replace = ticker(make_job, "ov-replace", scripts_root / "replace.rec", 300, marker=scripts_root / "replace.first",
                     overlap_policy="replace")
    allow = ticker(make_job, "ov-allow", scripts_root / "allow.rec", 8, overlap_policy="allow", max_instances=2)
    t0 = soon()
    at = lambda s: t0 + dt.timedelta(seconds=s)  # noqa: E731
    f_runs = [run_at(forbid, at(s)) for s in (0, 1, 2, 7)]
    q_runs = [run_at(queue, at(s)) for s in (0, 0.5, 1)]
    r_runs = [run_at(replace, at(s)) for s in (0, 2)]
    a_runs = [run_at(allow, at(0) + dt.timedelta(microseconds=i)) for i in range(3)]
    all_final([r.pk for r in f_runs + q_runs + r_runs + a_runs], 60)

    def states(runs):
        return [JobRun.objects.get(pk=r.pk).state for r in runs]

    # forbid: a job longer than its interval never overlaps; the skipped ticks are recorded.
    assert states(f_runs) == ["succeeded", "skipped", "skipped", "succeeded"]
    assert "overlap forbidden" in JobRun.objects.get(pk=f_runs[1].pk).error
    assert max_overlap(lifetimes(scripts_root / "forbid.rec").values()) == 1
    # queue one: the second waits and runs after the first, the third is skipped.
    assert states(q_runs) == ["succeeded", "succeeded", "skipped"]
    q_spans = lifetimes(scripts_root / "queue.rec")
    assert q_spans[q_runs[1].pk][0] >= q_spans[q_runs[0].pk][1] - 0.05
    # replace: the running one is stopped, the new one runs.
    assert states(r_runs) == ["cancelled", "succeeded"]
    assert "replaced by run" in JobRun.objects.get(pk=r_runs[0].pk).error
    assert max_overlap(lifetimes(scripts_root / "replace.rec").values()) == 1
    # allow, max instances 2: the third waits for a place.
    assert states(a_runs) == ["succeeded"] * 3
    assert max_overlap(lifetimes(scripts_root / "allow.rec").values()) == 2


def test_dependencies_required_optional_blocking_and_trigger(make_job, workers, scripts_root):
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("default", ["default"], 10))
    rec = scripts_root / "deps.rec"
    extract = ticker(make_job, "extract", rec, 10)
    failing = make_job("broken", "#!/bin/bash\nexit 3\n")
    # Two runs of load follow one success (the waiting one and the triggered one): allow both.
    load = ticker(make_job, "load", rec, 2, overlap_policy="allow", max_instances=2)
    report = ticker(make_job, "report", rec, 2)
    ping = ticker(make_job, "ping", rec, 2)
    a = ticker(make_job, "block-a", rec, 10)
    b = ticker(make_job, "block-b", rec, 10)
    JobDependency.objects.create(job=load, depends_on=extract, kind="required", trigger_on_success=True)
    JobDependency.objects.create(job=report, depends_on=failing, kind="required")
    JobDependency.objects.create(job=ping, depends_on=report, kind="optional")
    JobDependency.objects.create(job=a, depends_on=b, kind="blocking")

    # required, dependency failed: skipped with the reason; optional on a never-run job: runs.
    final_run(services.run_now(failing)[0].pk)
    skipped = final_run(services.run_now(report)[0].pk)
    assert skipped.state == RunState.SKIPPED and "required dependency broken" in skipped.error
    assert final_run(services.run_now(ping)[0].pk).state == RunState.SUCCEEDED

    # required, dependency running: the dependent waits for it; its success also triggers a run.
    t0 = soon()
    e_run = run_at(extract, t0)
    l_run = run_at(load, t0 + dt.timedelta(seconds=0.5))
    all_final([e_run.pk, l_run.pk])
    triggered = wait_for(lambda: JobRun.objects.filter(job=load, trigger="dependency").first(), 20)
    triggered = final_run(triggered.pk)
    assert [JobRun.objects.get(pk=p).state for p in (e_run.pk, l_run.pk, triggered.pk)] == ["succeeded"] * 3
    spans = lifetimes(rec)
    assert spans[l_run.pk][0] >= spans[e_run.pk][1] - 0.05

    # blocking, both ways: never at the same time.
    t1 = soon()
    pairs = [run_at(a, t1), run_at(b, t1 + dt.timedelta(seconds=0.5)),
             run_at(b, t1 + dt.timedelta(seconds=6)), run_at(a, t1 + dt.timedelta(seconds=6.5))]
    done = all_final([r.pk for r in pairs], 60)
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    spans = lifetimes(rec)
    assert max_overlap([spans[r.pk] for r in pairs]) == 1
    assert spans[pairs[1].pk][0] >= spans[pairs[0].pk][1] - 0.05  # b waited for a
    assert spans[pairs[3].pk][0] >= spans[pairs[2].pk][1] - 0.05  # a waited for b


def test_waiting_runs_start_by_priority_then_age(make_job, workers, scripts_root):
    slot = make_slot("prio", 1)
    rec = scripts_root / "prio.rec"
    blocker = ticker(make_job, "prio-blocker", rec, 30, slot)
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("prio", ["prio"], 4))
    first = run_at(blocker, timezone.now())
    wait_for(lambda: JobRun.objects.get(pk=first.pk).state == RunState.RUNNING, 30)
    now = timezone.now()
    order = [("low", 30), ("medium", 5), ("medium", 20), ("high", 2), ("critical", 1)]  # (priority, seconds ago)
    runs = {}
    for i, (priority, ago) in enumerate(order):
        job = ticker(make_job, f"prio-{i}", rec, 2, slot, priority=priority)
        runs[(priority, ago)] = run_at(job, now - dt.timedelta(seconds=ago))
    store = LeaseStore()
    wait_for(lambda: len(store.waiting("prio")) == 5, 20, message="all five in the waiting queue")
    assert JobRun.objects.get(pk=first.pk).state == RunState.RUNNING, "the blocker must still hold the slot"
    done = all_final([r.pk for r in runs.values()], 60)
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    spans = lifetimes(rec)
    started = sorted(runs, key=lambda k: spans[runs[k].pk][0])
    assert started == [("critical", 1), ("high", 2), ("medium", 20), ("medium", 5), ("low", 30)]
    assert max_overlap(spans.values()) == 1


def test_host_guard_pauses_a_low_job_under_real_memory_pressure(make_job, workers, scripts_root):
    available = psutil.virtual_memory().available / 2**20
    if available < 6000:
        pytest.skip("needs some 6 GB of free memory to create real pressure safely")
    reserve = int(available - 1500)
    slot = make_slot("guarded", 3)
    rec = scripts_root / "guard.rec"
    low = ticker(make_job, "guard-low", rec, 40, slot, priority="low")
    medium = ticker(make_job, "guard-medium", rec, 2, slot, priority="medium")
    start_all(workers.start("dispatch", ["dispatch"], 8),
              workers.start("guarded", ["guarded"], 3, SMARTCRON_HOST_MEMORY_RESERVE_MB=str(reserve),
                            SMARTCRON_HOST_GUARD_INTERVAL="0.2", SMARTCRON_HOST_GUARD_SETTLE_SECONDS="0.5",
                            SMARTCRON_HOST_GUARD_RESUME_MARGIN_MB="300"))
    run, _ = services.run_now(low)
    run = wait_for(lambda: JobRun.objects.filter(pk=run.pk, state=RunState.RUNNING, pid__isnull=False).first(), 30)
    pressure = bytearray(3000 * 2**20)
    pressure[::4096] = b"\1" * len(pressure[::4096])  # really resident
    try:
        wait_for(lambda: psutil.Process(run.pid).status() == psutil.STATUS_STOPPED, 15, 0.1, "the low job paused")
        waiting, _ = services.run_now(medium)
        time.sleep(2)
        assert JobRun.objects.get(pk=waiting.pk).state == RunState.QUEUED  # nothing new starts
        ticks = len(rec.read_text().splitlines())
        time.sleep(1)
        assert len(rec.read_text().splitlines()) == ticks  # the paused job does not advance
    finally:
        del pressure
    wait_for(lambda: psutil.Process(run.pid).status() != psutil.STATUS_STOPPED, 15, 0.1, "the low job resumed")
    done = all_final([run.pk, waiting.pk], 60)
    assert {r.state for r in done} == {RunState.SUCCEEDED}


def test_workers_never_exceed_slot_limits_even_with_spare_threads(make_job, workers, scripts_root):
    """Two workers on the same queue, each with more threads than the slot allows."""
    slot = make_slot("shared", 2)
    rec = scripts_root / "shared.rec"
    jobs = [ticker(make_job, f"shared-{i}", rec, 5, slot) for i in range(6)]
    start_all(workers.start("dispatch", ["dispatch"], 8), workers.start("w1", ["shared"], 6),
              workers.start("w2", ["shared"], 6))
    planned = soon()
    done = all_final([run_at(j, planned).pk for j in jobs], 60)
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    assert max_overlap(lifetimes(rec).values()) == 2
    assert leases_free("shared")
