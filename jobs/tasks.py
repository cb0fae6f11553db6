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

from jobs import queries, services
from jobs.interpreters import SYSTEM_PATH
from jobs.models import Job, JobRun, RunState
from jobs.paths import PathNotAllowed, check_script_path
from jobs.runner import Outcome, RunSpec
from jobs.runner import run as run_script
from slots import admission, conf, host_guard, procs
from slots.admission import admit
from slots.heartbeat import Heartbeat, claim_for_execute
from slots.leases import LeaseStore

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()

OUTCOME_STATE = {
    Outcome.SUCCEEDED: RunState.SUCCEEDED,
    Outcome.FAILED: RunState.FAILED,
    Outcome.TIMED_OUT: RunState.TIMED_OUT,
    Outcome.KILLED_MEMORY: RunState.KILLED_MEMORY,
    Outcome.CANCELLED: RunState.CANCELLED,
}


@shared_task(name="jobs.tick", ignore_result=True)
def tick(job_id: int) -> str:
    """Beat's tick for one job: create the run(s) of this minute and dispatch them."""
    now = timezone.now()
    job = Job.objects.select_related("slot").filter(pk=job_id).first()
    if job is None or not job.schedulable:
        return "not schedulable"
    created = 0
    wanted = job.planned_runs_for_tick(now) + job.runs_to_plan_ahead(now, settings.PLAN_AHEAD_SECONDS)
    # Usually this minute's run was planned ahead by the previous tick: one SELECT instead
    # of a failing INSERT per run, so the burst of ticks at :00 stays short.
    existing = set(JobRun.objects.filter(job=job, scheduled_for__in=wanted).values_list("scheduled_for", flat=True))
    for planned in wanted:
        if planned in existing:
            continue
        run, is_new = services.create_run(job, planned)
        if is_new:
            services.dispatch(run)
            created += 1
    return f"{created} run(s)"


# No Celery task events for this internal step (received/started/succeeded are three
# broker publishes per attempt, and a waiting run makes many attempts): Flower shows the
# ticks and the executions, where the jobs themselves run.
@shared_task(name="jobs.start", ignore_result=True, send_events=False)
def start(run_id: int, chain: str | None = None, attempt: int = 0, kick: bool = False) -> str:
    """At (just before) the planned second: admit the run into its slot, or keep it waiting.

    A waiting run is re-tried by one chain of these tasks on the dispatch queue (never
    an ETA task on a slot queue), backing off from ADMISSION_RETRY_MS; ``kick`` is a
    single extra attempt (a place was freed) that never starts a chain of its own.
    """
    run = queries.run_with_job.first(run_id)
    if run is None or run.is_final or run.state in (RunState.ADMITTED, RunState.RUNNING):
        return "nothing to do"
    now = timezone.now()
    waiting = (RunState.PENDING, RunState.QUEUED)
    slot = run.job.slot
    store = LeaseStore()

    def leave_line() -> None:
        store.leave_waiting(slot.name, run.pk)
        admission.clear_waiting(run.pk)

    if run.trigger == JobRun.Trigger.SCHEDULE and not run.job.runnable:
        # Planned (ahead) while the job was active; disabled or paused since.
        leave_line()
        why = "disabled" if not run.job.enabled else f"set to {run.job.status}"
        services.close_run(run, waiting, RunState.CANCELLED, error=f"job {why} after this run was planned")
        return "cancelled: job no longer scheduled"
    deadline = run.scheduled_for + dt.timedelta(seconds=run.job.start_window_seconds)
    if now > deadline:
        leave_line()
        services.close_run(run, waiting, RunState.MISSED,
                           error=f"not admitted within its start window ({run.job.start_window_seconds} s)")
        return "missed"
    # A retry chain is founded only when the run has to wait: most runs are admitted at
    # their first attempt and never need one (two Redis round trips fewer).
    token = admission.claim_chain(run.pk, chain) if chain is not None else None
    if token is not None and store.still_full(slot.name, run.pk, max_jobs=slot.max_concurrent,
                                              memory_budget_mb=slot.memory_budget_mb, cpu_budget=slot.cpu_percent,
                                              waiting_ttl=conf.WAITING_TTL_SECONDS):
        # A poll of a run waiting for room in a slot that still has none for it: nothing
        # else to check, and its place in line is kept.  A freed place wakes the runs it
        # fits at once, so this poll is only the safety net and can be slow.
        start.apply_async((run.pk,), {"chain": token, "attempt": attempt + 1},
                          countdown=admission.line_poll_delay_s(), queue=settings.DISPATCH_QUEUE)
        return "waiting: slot still full"
    # Only a run that waited before (queued, polled, woken) can have a waiting record.
    waited = chain is not None or kick or run.state == RunState.QUEUED
    began = time.perf_counter()
    decision = admit(run, store)
    admission.record_latency((time.perf_counter() - began) * 1000)
    if kick:
        store.woken_back(slot.name, run.pk)
    if decision.admitted:
        execute.apply_async((run.pk,), queue=slot.queue)
        if waited:
            admission.clear_waiting(run.pk)
        return "admitted"
    if decision.final_state is not None:
        if decision.final_state in (RunState.SKIPPED, RunState.CANCELLED, RunState.MISSED):
            services.close_run(run, waiting, decision.final_state, error=decision.reason)
        if waited:
            admission.clear_waiting(run.pk)
        return decision.reason
    # Waiting: a run admitted at its first attempt never passes through QUEUED (one write
    # less); one that must wait is shown as QUEUED from now on.
    if run.state == RunState.PENDING and not run.transition(RunState.PENDING, RunState.QUEUED, queued_at=now):
        leave_line()
        return "moved on"
    if chain is None and not kick:
        # Founded with its reason; None: another chain keeps this run alive already.
        token = admission.claim_chain(run.pk, None, decision.reason)
    elif token is not None:
        admission.note_waiting(run.pk, token, decision.reason)
    if token is None:
        return f"waiting (attempt without a chain): {decision.reason}"
    start.apply_async((run.pk,), {"chain": token, "attempt": attempt + 1},
                      countdown=admission.retry_delay_s(attempt), queue=settings.DISPATCH_QUEUE)
    return f"waiting: {decision.reason}"


def _run_user(job: Job) -> tuple[str | None, str]:
    """(user to run as, refusal reason)."""
    import pwd

    user = job.run_as_user or settings.RUN_AS_USER or None
    if user is not None:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            return None, f"run_as_user {user!r} does not exist on this host"
    else:
        uid = os.geteuid()
    # Root by name ("root", or any uid-0 alias) is refused the same way as running as ourselves.
    if uid == 0 and not settings.ALLOW_ROOT:
        return None, ("refusing to run a script as root: set SMARTCRON_RUN_AS_USER (or the job's run_as_user) "
                      "to an unprivileged user, or SMARTCRON_ALLOW_ROOT=1 to allow it explicitly")
    if uid == 0 and user is not None and os.geteuid() == 0:
        user = None  # already root: no switch needed
    return user, ""


@shared_task(name="jobs.execute", ignore_result=True, acks_late=True)
def execute(run_id: int) -> str:
    """On the slot worker: wait for the planned second, run the script, record the outcome."""
    run = queries.run_with_job.first(run_id)
    if run is None or run.state != RunState.ADMITTED:
        return "fenced: not admitted"
    job = run.job
    slot = run.slot_name or job.slot.name
    store = LeaseStore()
    owned = {"lease": False}
    try:
        return _execute(run, job, slot, store, owned)
    finally:
        # Only the execute that moved the run on owns its lease: a duplicate or late
        # delivery of this task must not free the place of the copy that is running.
        if owned["lease"]:
            # Lease, line entry, pause mark and kill request: one round trip.
            store.release(slot, run.pk, job.pk,
                          also=(host_guard.forget_command(run.pk), ("delete", admission.kill_key(run.pk))))
            admission.wake_after_release(slot, job.pk, store, slot_waiters=not owned.get("woken"), slot_row=job.slot)


def _execute(run: JobRun, job: Job, slot: str, store: LeaseStore, owned: dict) -> str:
    try:
        check_script_path(job.script_path)
        user, refusal = _run_user(job)
        if refusal:
            raise PermissionError(refusal)
        argv = job.command()
    except (PathNotAllowed, PermissionError, KeyError, ValueError) as exc:
        owned["lease"] = services.close_run(run, RunState.ADMITTED, RunState.FAILED, error=str(exc))
        return "refused"
    env = dict(os.environ)
    for var in list(env):
        if var.startswith(("SMARTCRON_", "DJANGO_", "CELERY_", "DATABASE_", "REDIS_", "SECRET_", "FLOWER_")):
            env.pop(var)
    env["PATH"] = SYSTEM_PATH
    env.update(job.environment or {})
    env.update({"SMARTCRON_JOB": job.name, "SMARTCRON_RUN_ID": str(run.pk),
                "SMARTCRON_SCHEDULED_FOR": run.scheduled_for.isoformat(), procs.TAG_VAR: procs.run_tag(run.pk)})
    spec = RunSpec(
        argv=argv, cwd=job.working_dir or None, env=env, timeout_s=job.timeout_seconds,
        memory_limit_bytes=int(job.memory_limit_mb * 1024 * 1024) if job.memory_limit_mb else None,
        user=user, sample_interval_s=settings.SAMPLE_INTERVAL_SECONDS,
        kill_grace_s=settings.KILL_GRACE_SECONDS, tail_bytes=settings.OUTPUT_TAIL_BYTES,
    )
    # Nothing between here and the fork/exec writes to the database: the start task came
    # early on purpose (DISPATCH_LEAD_MS) and the slot worker only renews its lease (Redis)
    # and sleeps to the planned second.  The run turns RUNNING right after the spawn, in
    # the same write as its pid and real start time.
    handed_back = claim_for_execute(run, slot, store)
    if handed_back:
        return f"requeued: {handed_back}"
    heartbeat = Heartbeat(run, slot, store)
    delay = run.scheduled_for.timestamp() - time.time()
    if 0 < delay < 30:
        time.sleep(delay)

    def on_start(pid: int, started_at: float) -> None:
        started = dt.datetime.fromtimestamp(started_at, dt.UTC)
        if run.transition(RunState.ADMITTED, RunState.RUNNING, started_at=started, pid=pid, worker_host=HOSTNAME,
                          heartbeat_at=timezone.now(),
                          queue_wait_s=(started - run.scheduled_for).total_seconds()):
            owned["lease"] = True
        else:
            # Moved on (cancelled, handed back) while this worker was about to start it:
            # the runner stops the tree at its first sample and the outcome is refused.
            heartbeat.stop("moved on before start (fenced)", RunState.CANCELLED)

    result = run_script(spec, on_start=on_start, on_sample=heartbeat)
    if not result.pid:  # the script could not even be started (on_start never ran)
        owned["lease"] = services.close_run(run, RunState.ADMITTED, RunState.FAILED, error=result.error[:4000])
        return "failed to start"
    if not owned["lease"]:
        return "fenced: moved on before start"
    # The whole tree is gone: its place in the slot is free now, not after the bookkeeping.
    store.free_place(slot, run.pk, job_id=job.pk, ttl=settings.LEASE_TTL_SECONDS)
    admission.wake_after_release(slot, None, store, slot_row=job.slot)
    owned["woken"] = True
    state = OUTCOME_STATE[result.outcome]
    if result.outcome == Outcome.CANCELLED and heartbeat.state:
        state = heartbeat.state  # LOST (lease gone) or KILLED_MEMORY (host guard) rather than CANCELLED
    started = dt.datetime.fromtimestamp(result.started_at, dt.UTC)
    error = result.error if result.outcome != Outcome.CANCELLED else (heartbeat.why or result.error)
    closed = services.close_run(
        run, RunState.RUNNING, state,
        finished_at=started + dt.timedelta(seconds=result.duration_s),
        duration_s=round(result.duration_s, 4), exit_code=result.exit_code,
        peak_memory_mb=round(result.peak_memory_mb, 3), cpu_seconds=round(result.cpu_seconds, 4),
        output_tail=result.output_tail, error=error[:4000], pid=result.pid,
    )
    if not closed:
        log.warning("run %s finished as %s but was already closed: late completion refused", run.pk, state)
        return "fenced: late completion refused"
    return state


@shared_task(name="jobs.reconcile", ignore_result=True)
def reconcile() -> dict:
    """Periodic repair: reclaim dead leases, re-dispatch stuck runs, close expired ones."""
    from jobs.reconcile import reconcile_once

    return reconcile_once()
