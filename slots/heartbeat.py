"""What a slot worker does for a running job besides running it.

``Heartbeat`` is the runner's ``on_sample`` callback: it watches for kill requests,
renews the lease every ``HEARTBEAT_SECONDS`` and stamps the run's heartbeat, each as a
fenced operation.  When the lease is gone (reclaimed after missed heartbeats) or the run
was closed by someone else, it asks the runner to stop the whole process tree: a
worker that was paused or cut off and wakes up late kills its child instead of
finishing a run that is no longer its own.

``claim_for_execute`` is the last check before the script starts: the lease must still
be held (it may have expired while the execute message waited) and this host must have
its memory reserve; otherwise the run goes back to the queue instead of starting.
"""

from __future__ import annotations

import logging
import time

import redis
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from jobs.models import JobRun, RunState
from slots import conf, host_guard
from slots.admission import kill_reason, requeue
from slots.leases import LeaseStore

log = logging.getLogger(__name__)

# Kill requests are a Redis read; once every this many seconds is prompt enough.
KILL_CHECK_SECONDS = 0.2


class Heartbeat:
    def __init__(self, run: JobRun, slot: str, store: LeaseStore) -> None:
        self.run = run
        self.slot = slot
        self.store = store
        self.why = ""
        self.state: str | None = None  # final state when the run was stopped from here
        now = time.monotonic()
        self._last_beat = now
        self._last_renewed = now
        self._last_kill_check = 0.0

    def stop(self, why: str, state: str) -> bool:
        self.why, self.state = why, state
        return True

    def __call__(self) -> bool:
        """True asks the runner to stop the job (TERM, grace, KILL to the whole tree)."""
        if self.state is not None:
            return True  # already decided (e.g. fenced off right after the spawn)
        now = time.monotonic()
        if now - self._last_kill_check >= KILL_CHECK_SECONDS:
            self._last_kill_check = now
            try:
                reason = kill_reason(self.run.pk)
            except redis.RedisError:
                reason = None
            if reason:
                if reason.startswith(host_guard.HOST_KILL_PREFIX):
                    return self.stop(reason[len(host_guard.HOST_KILL_PREFIX):].strip(), RunState.KILLED_MEMORY)
                return self.stop(reason, RunState.CANCELLED)
        if now - self._last_beat < settings.HEARTBEAT_SECONDS:
            return False
        self._last_beat = now
        try:
            held = self.store.renew(self.slot, self.run.pk, ttl=settings.LEASE_TTL_SECONDS, job_id=self.run.job_id)
        except redis.RedisError as exc:
            # Redis unreachable: keep going while the lease would still be valid.
            if now - self._last_renewed > settings.LEASE_TTL_SECONDS:
                return self.stop(f"lease lost: Redis unreachable for {now - self._last_renewed:.0f} s ({exc})",
                                 RunState.LOST)
            return False
        if not held:
            return self.stop("lease lost (reclaimed after missed heartbeats)", RunState.LOST)
        self._last_renewed = now
        try:
            alive = JobRun.objects.filter(pk=self.run.pk, state=RunState.RUNNING).update(heartbeat_at=timezone.now())
        except DatabaseError:
            return False  # the lease is the truth; the row's heartbeat is informational
        if not alive:
            return self.stop("run closed by someone else (fenced)", RunState.LOST)
        return False


def claim_for_execute(run: JobRun, slot: str, store: LeaseStore) -> str | None:
    """None if the script may start now; else why the run was handed back to the queue."""
    if conf.HOST_GUARD:
        low = host_guard.local_block()
        if low:
            return low if requeue(run, low, store) else "moved on"
    if not store.renew(slot, run.pk, ttl=settings.LEASE_TTL_SECONDS, job_id=run.job_id):
        why = "lease expired before the slot worker picked the run up"
        return why if requeue(run, why, store) else "moved on"
    return None
