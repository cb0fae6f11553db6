"""Admission control: may this run start now, in its slot?

Called by the dispatch step (``jobs.start``) when a run's planned second comes.  A run
that cannot start yet stays QUEUED and is re-tried; a run that must not start at all
(overlap forbidden) gets a final state here.
"""

from __future__ import annotations

import dataclasses
import logging

from django.conf import settings
from django.utils import timezone

from jobs.models import LIVE_STATES, Job, JobRun, RunState
from slots.leases import LeaseStore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Decision:
    admitted: bool
    reason: str
    final_state: str | None = None  # set when the run is closed instead of waiting

    @property
    def waiting(self) -> bool:
        return not self.admitted and self.final_state is None


def request_kill(run_id: int, ttl: int = 3600) -> None:
    from slots.redis_client import get_redis

    get_redis().set(f"smartcron:kill:{run_id}", "1", ex=ttl)


def kill_requested(run_id: int) -> bool:
    from slots.redis_client import get_redis

    return bool(get_redis().exists(f"smartcron:kill:{run_id}"))


def _overlap(run: JobRun) -> Decision | None:
    job = run.job
    live = list(JobRun.objects.filter(job=job, state__in=LIVE_STATES).exclude(pk=run.pk).values_list("pk", flat=True))
    if not live:
        return None
    policy = job.overlap_policy
    if policy == Job.OverlapPolicy.FORBID:
        return Decision(False, f"overlap forbidden: run {live[0]} of this job is still running", RunState.SKIPPED)
    if policy == Job.OverlapPolicy.ALLOW:
        if len(live) >= job.max_instances:
            return Decision(False, f"max instances ({job.max_instances}) running")
        return None
    if policy == Job.OverlapPolicy.QUEUE:
        older_waiting = JobRun.objects.filter(
            job=job, state=RunState.QUEUED, scheduled_for__lt=run.scheduled_for).exists()
        if older_waiting:
            return Decision(False, "overlap policy 'queue': one run is already waiting", RunState.SKIPPED)
        return Decision(False, "overlap policy 'queue': waiting for the running one")
    if policy == Job.OverlapPolicy.REPLACE:
        for pk in live:
            request_kill(pk)
        return Decision(False, "overlap policy 'replace': stopping the running one")
    return None


def admit(run: JobRun, store: LeaseStore | None = None) -> Decision:
    """Try to move ``run`` from QUEUED to ADMITTED, taking a lease in its slot."""
    job = run.job
    slot = job.slot
    if not slot.enabled:
        return Decision(False, f"slot {slot.name} is disabled")
    blocked = _overlap(run)
    if blocked is not None:
        return blocked
    store = store or LeaseStore()
    expected = job.expected_peak_mb
    cpu_claim = float(job.cpu_weight) * 100.0 / max(slot.max_concurrent, 1)
    attempt = store.acquire(
        slot.name, run.pk, ttl=settings.LEASE_TTL_SECONDS, max_jobs=slot.max_concurrent,
        memory_mb=expected, memory_budget_mb=slot.memory_budget_mb, cpu=cpu_claim, cpu_budget=slot.cpu_percent,
    )
    if not attempt.granted:
        return Decision(False, f"slot {slot.name} full ({attempt.reason}: {attempt.holders} running, "
                               f"{attempt.memory_in_use_mb:.0f}/{slot.memory_budget_mb} MB)")
    now = timezone.now()
    if run.transition(RunState.QUEUED, RunState.ADMITTED, admitted_at=now, slot_name=slot.name,
                      expected_memory_mb=expected, heartbeat_at=now):
        return Decision(True, "admitted")
    # Someone else moved the run on.  The lease is keyed by the run id, so if another
    # dispatcher admitted the same run we share its lease and must leave it alone.
    state = JobRun.objects.filter(pk=run.pk).values_list("state", flat=True).first()
    if state not in LIVE_STATES:
        store.release(slot.name, run.pk)
    return Decision(False, f"run is {state}, not queued", final_state=state)
