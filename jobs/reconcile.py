"""The reconciler: the periodic repair that makes crashes harmless.

- leases whose holder stopped heartbeating are reclaimed: a RUNNING run becomes LOST
  (after whatever is left of its processes on this host was killed, so a retry never
  runs next to its predecessor) and is retried per the job's policy; an ADMITTED run
  whose script never started goes back to the queue;
- live runs whose lease vanished (Redis restarted) and whose heartbeat is stale: the same;
- leases still held by runs that are already closed are released, and the slot's
  memory/CPU claims are rebuilt from the live lease set;
- processes of runs nobody will report any more (their worker died) are killed;
- PENDING runs whose start task was lost (dispatch worker killed while holding the ETA
  message) and QUEUED runs whose retry chain broke are dispatched again (every step is
  a conditional update, so a duplicate start is harmless);
- ticks that beat never delivered (beat down, dispatch queue lost) get their run row:
  dispatched if still inside the start window, else MISSED.

No command or person ever resets a slot counter: usage is always the live lease set.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from jobs import services
from jobs.models import FINAL_STATES, LIVE_STATES, Job, JobRun, RunState
from slots import procs
from slots.admission import WAITING_PREFIX, requeue
from slots.leases import LeaseStore
from slots.models import ExecutionSlot
from slots.redis_client import get_redis

log = logging.getLogger(__name__)

# How far back missed ticks are looked for, and how long a tick may be late before the
# reconciler creates its run itself.
MISSED_LOOKBACK = dt.timedelta(minutes=5)
TICK_GRACE = dt.timedelta(seconds=20)


def lose(run: JobRun, why: str, store: LeaseStore | None = None) -> bool:
    """Close a live run whose holder is gone: back to the queue if it never started, else LOST."""
    if run.state == RunState.ADMITTED:
        return requeue(run, why, store)
    # Kill first, close second: the retry that closing may schedule must find nothing left.
    procs.kill_run_processes(run.pk)
    if services.close_run(run, LIVE_STATES, RunState.LOST, error=why):
        log.warning("run %s of %s marked LOST: %s", run.pk, run.job.name, why)
        return True
    return False


def reclaim_leases(store: LeaseStore) -> int:
    lost = 0
    for slot in ExecutionSlot.objects.values_list("name", flat=True):
        for run_id in store.reap(slot):
            run = JobRun.objects.select_related("job").filter(pk=run_id).first()
            if run is not None and run.state in LIVE_STATES:
                lost += lose(run, "lease expired: its worker stopped heartbeating", store)
    return lost


def close_orphans(store: LeaseStore, now: dt.datetime) -> int:
    stale = now - dt.timedelta(seconds=settings.LEASE_TTL_SECONDS)
    lost = 0
    for run in JobRun.objects.select_related("job").filter(state__in=LIVE_STATES, heartbeat_at__lt=stale):
        # A finished script frees its slot place before its row is closed; its job
        # instance is held until then.
        if not store.holds(run.slot_name, run.pk) and run.pk not in store.job_instances(run.job_id):
            lost += lose(run, "no live lease and no heartbeat: its worker is gone", store)
    return lost


def release_closed(store: LeaseStore) -> int:
    """Free places still held by closed runs (a worker died between closing and releasing)."""
    fixed = 0
    for slot in ExecutionSlot.objects.values_list("name", flat=True):
        holders = store.usage(slot).holder_ids
        if holders:
            for pk, job_id in JobRun.objects.filter(pk__in=holders, state__in=FINAL_STATES).values_list("pk", "job_id"):
                store.release(slot, pk, job_id)
                fixed += 1
        fixed += store.rebuild(slot)
    return fixed


def redispatch_stuck(now: dt.datetime) -> int:
    n = 0
    r = get_redis()
    for run in JobRun.objects.filter(state=RunState.PENDING, scheduled_for__lt=now - dt.timedelta(seconds=10)):
        services.dispatch(run)
        n += 1
    for run in JobRun.objects.filter(state=RunState.QUEUED, queued_at__lt=now - dt.timedelta(seconds=10)):
        if not r.exists(f"{WAITING_PREFIX}{run.pk}"):
            services.dispatch(run)
            n += 1
    return n


def backfill_missed_ticks(now: dt.datetime) -> int:
    """Create the runs of ticks that never arrived."""
    n = 0
    end = now - TICK_GRACE
    for job in Job.objects.schedulable().select_related("slot"):
        start = now - MISSED_LOOKBACK
        if job.schedule_since:
            start = max(start, job.schedule_since + dt.timedelta(minutes=1))
        if start >= end:
            continue
        planned = job.next_runs(count=400, after=start)
        planned = [p for p in planned if p < end]
        if not planned:
            continue
        have = set(JobRun.objects.filter(job=job, scheduled_for__in=planned).values_list("scheduled_for", flat=True))
        for moment in planned:
            if moment in have:
                continue
            run, created = services.create_run(job, moment)
            if created:
                log.warning("tick for %s at %s never arrived; run %s created by the reconciler",
                            job.name, moment, run.pk)
                services.dispatch(run)
                n += 1
    return n


def reconcile_once() -> dict[str, int]:
    store = LeaseStore()
    now = timezone.now()
    return {
        "orphan_processes": len(procs.reap_orphans()),
        "reclaimed": reclaim_leases(store),
        "orphans": close_orphans(store, now),
        "released": release_closed(store),
        "redispatched": redispatch_stuck(now),
        "backfilled": backfill_missed_ticks(now),
    }
