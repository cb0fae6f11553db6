"""The Celery tasks of one run: tick -> start (dispatch queue) -> execute (slot queue).

See ARCHITECTURE.md, "The flow of one run".
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from jobs import services
from jobs.models import Job, JobRun, RunState
from jobs.paths import PathNotAllowed, check_script_path
from jobs.interpreters import SYSTEM_PATH
from jobs.runner import Outcome, RunSpec
from jobs.runner import run as run_script
from slots.admission import admit, kill_requested
from slots.leases import LeaseStore
from slots.redis_client import get_redis

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()

OUTCOME_STATE = {
    Outcome.SUCCEEDED: RunState.SUCCEEDED,
    Outcome.FAILED: RunState.FAILED,
    Outcome.TIMED_OUT: RunState.TIMED_OUT,
    Outcome.KILLED_MEMORY: RunState.KILLED_MEMORY,
    Outcome.CANCELLED: RunState.CANCELLED,
}


def _waiting_key(run_id: int) -> str:
    return f"smartcron:waiting:{run_id}"


@shared_task(name="jobs.tick", ignore_result=True)
def tick(job_id: int) -> str:
    """Beat's tick for one job: create the run(s) of this minute and dispatch them."""
    now = timezone.now()
    job = Job.objects.select_related("slot").filter(pk=job_id).first()
    if job is None or not job.schedulable:
        return "not schedulable"
    created = 0
    for planned in job.planned_runs_for_tick(now):
        run, is_new = services.create_run(job, planned)
        if is_new:
            services.dispatch(run)
            created += 1
    return f"{created} run(s)"


@shared_task(name="jobs.start", ignore_result=True)
def start(run_id: int) -> str:
    """At (just before) the planned second: admit the run into its slot, or keep it waiting."""
    run = JobRun.objects.select_related("job", "job__slot").filter(pk=run_id).first()
    if run is None or run.is_final or run.state in (RunState.ADMITTED, RunState.RUNNING):
        return "nothing to do"
    now = timezone.now()
    if run.state == RunState.PENDING and not run.transition(RunState.PENDING, RunState.QUEUED, queued_at=now):
        return "moved on"
    deadline = run.scheduled_for + dt.timedelta(seconds=run.job.start_window_seconds)
    if now > deadline:
        services.close_run(run, RunState.QUEUED, RunState.MISSED,
                           error=f"not admitted within its start window ({run.job.start_window_seconds} s)")
        return "missed"
    decision = admit(run)
    if decision.admitted:
        execute.apply_async((run.pk,), queue=run.job.slot.queue)
        get_redis().delete(_waiting_key(run.pk))
        return "admitted"
    if decision.final_state is not None:
        if decision.final_state in (RunState.SKIPPED, RunState.CANCELLED):
            services.close_run(run, RunState.QUEUED, decision.final_state, error=decision.reason)
        return decision.reason
    # Wait: re-try promptly on the dispatch queue (never an ETA task on a slot queue).
    retry_s = settings.ADMISSION_RETRY_MS / 1000
    get_redis().set(_waiting_key(run.pk), decision.reason, ex=max(5, int(retry_s * 10)))
    start.apply_async((run.pk,), countdown=retry_s, queue=settings.DISPATCH_QUEUE)
    return f"waiting: {decision.reason}"


def _run_user(job: Job) -> tuple[str | None, str]:
    """(user to run as, refusal reason)."""
    user = job.run_as_user or settings.RUN_AS_USER or None
    if user is None and os.geteuid() == 0 and not settings.ALLOW_ROOT:
        return None, ("refusing to run a script as root: set SMARTCRON_RUN_AS_USER (or the job's run_as_user), "
                      "or SMARTCRON_ALLOW_ROOT=1 to allow it explicitly")
    return user, ""


@shared_task(name="jobs.execute", ignore_result=True, acks_late=True)
def execute(run_id: int) -> str:
    """On the slot worker: wait for the planned second, run the script, record the outcome."""
    run = JobRun.objects.select_related("job", "job__slot").filter(pk=run_id).first()
    if run is None or run.state != RunState.ADMITTED:
        return "fenced: not admitted"
    job = run.job
    slot = run.slot_name or job.slot.name
    store = LeaseStore()
    try:
        return _execute(run, job, slot, store)
    finally:
        store.release(slot, run.pk)


def _execute(run: JobRun, job: Job, slot: str, store: LeaseStore) -> str:
    try:
        check_script_path(job.script_path)
        user, refusal = _run_user(job)
        if refusal:
            raise PermissionError(refusal)
        argv = job.command()
    except (PathNotAllowed, PermissionError, KeyError, ValueError) as exc:
        services.close_run(run, RunState.ADMITTED, RunState.FAILED, error=str(exc))
        return "refused"
    env = dict(os.environ)
    for var in list(env):
        if var.startswith(("SMARTCRON_", "DJANGO_", "CELERY_", "DATABASE_", "REDIS_", "SECRET_", "FLOWER_")):
            env.pop(var)
    env["PATH"] = SYSTEM_PATH
    env.update(job.environment or {})
    env.update({"SMARTCRON_JOB": job.name, "SMARTCRON_RUN_ID": str(run.pk),
                "SMARTCRON_SCHEDULED_FOR": run.scheduled_for.isoformat()})
    spec = RunSpec(
        argv=argv, cwd=job.working_dir or None, env=env, timeout_s=job.timeout_seconds,
        memory_limit_bytes=int(job.memory_limit_mb * 1024 * 1024) if job.memory_limit_mb else None,
        user=user, sample_interval_s=settings.SAMPLE_INTERVAL_SECONDS,
        kill_grace_s=settings.KILL_GRACE_SECONDS, tail_bytes=settings.OUTPUT_TAIL_BYTES,
    )
    # Everything that writes to the database happens before the planned second: the start
    # task came early on purpose (DISPATCH_LEAD_MS), and only the fork/exec is left for the
    # second itself.  started_at is corrected to the real start right after the spawn.
    if not run.transition(RunState.ADMITTED, RunState.RUNNING, started_at=timezone.now(), worker_host=HOSTNAME,
                          heartbeat_at=timezone.now()):
        return "fenced: moved on before start"
    delay = run.scheduled_for.timestamp() - time.time()
    if 0 < delay < 30:
        time.sleep(delay)
    last_beat = time.monotonic()
    lost = {"why": ""}

    def on_start(pid: int, started_at: float) -> None:
        started = dt.datetime.fromtimestamp(started_at, dt.UTC)
        JobRun.objects.filter(pk=run.pk, state=RunState.RUNNING).update(
            pid=pid, started_at=started, queue_wait_s=(started - run.scheduled_for).total_seconds())

    def on_sample() -> bool:
        nonlocal last_beat
        if kill_requested(run.pk):
            lost["why"] = "killed on request"
            return True
        if time.monotonic() - last_beat >= settings.HEARTBEAT_SECONDS:
            last_beat = time.monotonic()
            if not store.renew(slot, run.pk, ttl=settings.LEASE_TTL_SECONDS):
                lost["why"] = "lease lost (reclaimed after missed heartbeats)"
                return True
            if not JobRun.objects.filter(pk=run.pk, state=RunState.RUNNING).update(heartbeat_at=timezone.now()):
                lost["why"] = "run closed by someone else (fenced)"
                return True
        return False

    result = run_script(spec, on_start=on_start, on_sample=on_sample)
    state = OUTCOME_STATE[result.outcome]
    started = dt.datetime.fromtimestamp(result.started_at, dt.UTC)
    error = result.error if state != RunState.CANCELLED else (lost["why"] or result.error)
    closed = services.close_run(
        run, RunState.RUNNING, state,
        finished_at=started + dt.timedelta(seconds=result.duration_s),
        duration_s=round(result.duration_s, 4), exit_code=result.exit_code,
        peak_memory_mb=round(result.peak_memory_mb, 3), cpu_seconds=round(result.cpu_seconds, 4),
        output_tail=result.output_tail, error=error[:4000], pid=result.pid,
    )
    get_redis().delete(f"smartcron:kill:{run.pk}")
    if not closed:
        log.warning("run %s finished as %s but was already closed: late completion refused", run.pk, state)
        return "fenced: late completion refused"
    return state


@shared_task(name="jobs.reconcile", ignore_result=True)
def reconcile() -> dict:
    """Periodic repair: reclaim dead leases, re-dispatch stuck runs, close expired ones."""
    from jobs.reconcile import reconcile_once

    return reconcile_once()
