"""Admission control: may this run start now, in its slot?

Called by the dispatch step (``jobs.start``) when a run's planned second comes.  The
checks, in order (see docs/slots.md):

1. the slot is enabled;
2. overlap policy of the job (forbid / queue one / replace / allow up to max instances);
3. dependencies (required / optional / blocking, ``slots.dependencies``);
4. host memory reserve on the hosts serving the slot's queue (``slots.host_guard``);
5. one atomic Lua call (``slots.leases``): no exclusive job running, job instances,
   slot job count, memory budget (expected peaks), CPU share, priority order.

A run that cannot start yet stays QUEUED and is re-tried (``Decision.waiting``); a run
that must not start at all gets a final state (``Decision.final_state``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import ACTIVE_STATES, LIVE_STATES, PRIORITY_RANK, Job, JobRun, RunState
from slots import conf, dependencies, host_guard
from slots.leases import LeaseStore, waiting_score
from slots.models import ExecutionSlot
from slots.redis_client import get_redis

log = logging.getLogger(__name__)

KILL_PREFIX = "smartcron:kill:"
WAITING_PREFIX = "smartcron:waiting:"  # per run: its retry chain and why it waits
LATENCY_KEY = "smartcron:admission:latency_ms"
LATENCY_SAMPLES = 5000
# How many of a slot's waiting runs are woken when a place frees up.
WAKE_HEAD = 3


@dataclasses.dataclass
class Decision:
    admitted: bool
    reason: str
    final_state: str | None = None  # set when the run is closed instead of waiting

    @property
    def waiting(self) -> bool:
        return not self.admitted and self.final_state is None


# --- kill requests (read by the slot worker's sampling loop) ------------------------------
def kill_key(run_id: int) -> str:
    """A run's kill request; deleted with its lease (``LeaseStore.release(also=...)``)."""
    return f"{KILL_PREFIX}{run_id}"


def request_kill(run_id: int, ttl: int = 3600, reason: str = "killed on request") -> None:
    get_redis().set(kill_key(run_id), reason, ex=ttl)


def kill_reason(run_id: int) -> str | None:
    value = get_redis().get(kill_key(run_id))
    return value.decode() if value is not None else None


def kill_requested(run_id: int) -> bool:
    return bool(get_redis().exists(kill_key(run_id)))


# --- the retry chain of a waiting run -----------------------------------------------------
def claim_chain(run_id: int, chain: str | None, reason: str = "") -> str | None:
    """Make sure exactly one retry chain keeps a waiting run alive; return its token or None.

    ``chain`` None: a fresh start task (dispatch, reconciler).  It founds a chain unless
    one is alive.  A chain whose key expired (a slow dispatch worker) takes it back; a
    chain that was superseded stops.
    """
    r = get_redis()
    key = f"{WAITING_PREFIX}{run_id}"
    ttl_ms = int(conf.WAITING_TTL_SECONDS * 1000)
    if chain is None:  # founded only if no chain is alive: one SET NX
        token = uuid.uuid4().hex
        record = json.dumps({"chain": token, "reason": reason, "since": time.time()})
        return token if r.set(key, record, px=ttl_ms, nx=True) else None
    current = r.get(key)
    owner = json.loads(current).get("chain") if current else None
    if owner is None:
        record = json.dumps({"chain": chain, "reason": "", "since": time.time()})
        return chain if r.set(key, record, px=ttl_ms, nx=True) else None
    return chain if owner == chain else None


def note_waiting(run_id: int, chain: str, reason: str) -> None:
    r = get_redis()
    key = f"{WAITING_PREFIX}{run_id}"
    current = r.get(key)
    since = json.loads(current).get("since", time.time()) if current else time.time()
    r.set(key, json.dumps({"chain": chain, "reason": reason, "since": since}),
          px=int(conf.WAITING_TTL_SECONDS * 1000))


def clear_waiting(run_id: int) -> None:
    get_redis().delete(f"{WAITING_PREFIX}{run_id}")


def waiting_reasons(run_ids: list[int]) -> dict[int, str]:
    """Why each of these QUEUED runs waits (as of its last attempt)."""
    if not run_ids:
        return {}
    values = get_redis().mget([f"{WAITING_PREFIX}{pk}" for pk in run_ids])
    return {pk: json.loads(v).get("reason", "") for pk, v in zip(run_ids, values, strict=True) if v}


def retry_delay_s(attempt: int) -> float:
    """Back off from ADMISSION_RETRY_MS to ADMISSION_RETRY_MAX_MS (x1.5 per attempt)."""
    base = settings.ADMISSION_RETRY_MS
    return min(float(conf.ADMISSION_RETRY_MAX_MS), base * 1.5 ** min(attempt, 30)) / 1000.0


def line_poll_delay_s() -> float:
    """Poll period of a run that waits in a slot's line with no room yet (woken on release).

    Half the waiting-entry TTL: the entry is refreshed before it can expire even when a
    poll comes late, and a backlog of hundreds of waiting runs costs a few cheap Redis
    calls per second instead of a full admission per run every half second.
    """
    return max(retry_delay_s(0), conf.WAITING_TTL_SECONDS / 2)


_latency_buffer: list[float] = []
_latency_lock = threading.Lock()
_latency_flusher: threading.Thread | None = None
LATENCY_FLUSH_SECONDS = 0.5


def _flush_latencies() -> None:
    with _latency_lock:
        samples = _latency_buffer[:]
        _latency_buffer.clear()
    if samples:
        pipe = get_redis().pipeline(transaction=False)
        pipe.lpush(LATENCY_KEY, *samples)
        pipe.ltrim(LATENCY_KEY, 0, LATENCY_SAMPLES - 1)
        pipe.execute()


def _latency_flush_loop() -> None:
    while True:
        time.sleep(LATENCY_FLUSH_SECONDS)
        try:
            _flush_latencies()
        except Exception:  # noqa: BLE001 - a statistic; the next flush tries again
            log.debug("could not flush admission latencies", exc_info=True)


def record_latency(ms: float) -> None:
    """Keep one admission's latency; written to Redis in batches every half second.

    A Redis round trip per admission cost as much as a third of the admission itself;
    a background thread of this process sends what accumulated (a crash loses at most
    half a second of samples of a statistic).
    """
    global _latency_flusher
    with _latency_lock:
        _latency_buffer.append(round(ms, 3))
        if _latency_flusher is None or not _latency_flusher.is_alive():
            _latency_flusher = threading.Thread(target=_latency_flush_loop, name="smartcron-latency-flush",
                                                daemon=True)
            _latency_flusher.start()


def latencies_ms() -> list[float]:
    _flush_latencies()  # this process's own samples too
    return [float(v) for v in get_redis().lrange(LATENCY_KEY, 0, -1)]


# --- the checks ------------------------------------------------------------------------------
def cpu_claim(job: Job, slot: ExecutionSlot) -> float:
    """A weight-1.0 job claims the slot's fair share: ``max_concurrent`` of them fill ``cpu_percent``."""
    return float(job.cpu_weight) * float(slot.cpu_percent) / max(slot.max_concurrent, 1)


def _overlap(run: JobRun) -> Decision | None:
    job = run.job
    if job.overlap_policy == Job.OverlapPolicy.ALLOW:
        # Up to max_instances at once: the job's instance lease (one atomic Lua call in
        # LeaseStore.acquire) enforces exactly that, so no query is needed here.
        return None
    # One query for the job's other active runs (usually none).
    others = list(JobRun.objects.filter(job=job, state__in=ACTIVE_STATES).exclude(pk=run.pk)
                  .order_by("scheduled_for").values_list("pk", "state", "scheduled_for"))
    live = [pk for pk, state, _ in others if state in LIVE_STATES]
    older_queued = [pk for pk, state, planned in others if state == RunState.QUEUED and planned < run.scheduled_for]
    policy = job.overlap_policy
    if policy == Job.OverlapPolicy.FORBID:
        if live:
            return Decision(False, f"overlap forbidden: run {live[0]} of this job is still running", RunState.SKIPPED)
        if older_queued:
            return Decision(False, f"overlap forbidden: run {older_queued[0]} of this job is still waiting",
                            RunState.SKIPPED)
        return None
    if policy == Job.OverlapPolicy.QUEUE:
        if older_queued:
            return Decision(False, f"overlap policy 'queue one': run {older_queued[0]} is already queued",
                            RunState.SKIPPED)
        if live:
            return Decision(False, f"overlap policy 'queue one': waiting for run {live[0]} to finish")
        return None
    if policy == Job.OverlapPolicy.REPLACE:
        from jobs import services

        for pk in older_queued:
            older = JobRun.objects.select_related("job").get(pk=pk)
            services.close_run(older, RunState.QUEUED, RunState.CANCELLED, error=f"replaced by run {run.pk}")
        for pk in live:
            request_kill(pk, reason=f"replaced by run {run.pk} (overlap policy 'replace')")
        if live:
            return Decision(False, f"overlap policy 'replace': stopping run {live[0]}")
        return None
    return None


def _refusal(attempt, run: JobRun, slot: ExecutionSlot, exclusive: list[int]) -> Decision:
    job = run.job
    if attempt.reason == "blocked":
        other = Job.objects.filter(pk=exclusive[int(attempt.detail) - 1]).values_list("name", flat=True).first()
        return Decision(False, f"waiting: {other} is running (dependency or blocking link)")
    if attempt.reason == "instances":
        if job.overlap_policy == Job.OverlapPolicy.FORBID:
            return Decision(False, "overlap forbidden: another run of this job holds a lease", RunState.SKIPPED)
        return Decision(False, f"waiting: {job.max_instances if job.overlap_policy == Job.OverlapPolicy.ALLOW else 1} "
                               f"instance(s) of this job running")
    if attempt.reason == "priority":
        return Decision(False, f"waiting: run {attempt.detail} is ahead in slot {slot.name}'s queue")
    what = {"jobs": f"{attempt.holders}/{slot.max_concurrent} jobs",
            "memory": f"memory {attempt.memory_in_use_mb:.0f}+{job.expected_peak_mb:.0f} > {slot.memory_budget_mb} MB",
            "cpu": f"cpu {attempt.cpu_in_use:.0f}+{cpu_claim(job, slot):.0f} > {slot.cpu_percent} %"}
    return Decision(False, f"slot {slot.name} full ({what.get(attempt.reason, attempt.reason)})")


def admit(run: JobRun, store: LeaseStore | None = None) -> Decision:
    """Try to move ``run`` from QUEUED to ADMITTED, taking a lease in its slot."""
    job = run.job
    slot = job.slot
    store = store or LeaseStore()

    def wait_elsewhere(decision: Decision) -> Decision:
        # Not waiting for room in the slot: it must not hold a place in the slot's queue.
        store.leave_waiting(slot.name, run.pk)
        return decision

    if not slot.enabled:
        return wait_elsewhere(Decision(False, f"slot {slot.name} is disabled"))
    blocked = _overlap(run)
    if blocked is not None:
        return wait_elsewhere(blocked)
    links = dependencies.links_of(job)
    verdict = dependencies.check(run, links)
    if verdict.skip:
        return wait_elsewhere(Decision(False, verdict.skip, RunState.SKIPPED))
    if verdict.wait:
        return wait_elsewhere(Decision(False, verdict.wait))
    host = host_guard.admission_block(slot.queue)
    if host:
        return wait_elsewhere(Decision(False, host))
    exclusive = dependencies.exclusive_job_ids(job, links)
    expected = job.expected_peak_mb
    attempt = store.acquire(
        slot.name, run.pk, ttl=settings.LEASE_TTL_SECONDS, max_jobs=slot.max_concurrent,
        memory_mb=expected, memory_budget_mb=slot.memory_budget_mb, cpu=cpu_claim(job, slot),
        cpu_budget=slot.cpu_percent, job_id=job.pk,
        max_instances=job.max_instances if job.overlap_policy == Job.OverlapPolicy.ALLOW else 1,
        exclusive_with=exclusive,
        waiting_score=waiting_score(PRIORITY_RANK.get(job.priority, 2), run.scheduled_for.timestamp()),
        waiting_ttl=conf.WAITING_TTL_SECONDS,
    )
    if not attempt.granted:
        return _refusal(attempt, run, slot, exclusive)
    now = timezone.now()
    if run.transition((RunState.PENDING, RunState.QUEUED), RunState.ADMITTED, admitted_at=now,
                      queued_at=run.queued_at or now, slot_name=slot.name, expected_memory_mb=expected,
                      heartbeat_at=now):
        return Decision(True, "admitted")
    # Someone else moved the run on.  The lease is keyed by the run id, so if another
    # dispatcher admitted the same run we share its lease and must leave it alone.
    state = JobRun.objects.filter(pk=run.pk).values_list("state", flat=True).first()
    if state not in LIVE_STATES:
        store.release(slot.name, run.pk, job.pk)
    return Decision(False, f"run is {state}, not queued", final_state=state)


# --- handing a run back, waking waiting runs -------------------------------------------------
def requeue(run: JobRun, why: str, store: LeaseStore | None = None) -> bool:
    """ADMITTED -> QUEUED (the script never started): free its place and try again."""
    from jobs import services

    if not run.transition(RunState.ADMITTED, RunState.QUEUED, admitted_at=None):
        return False
    (store or LeaseStore()).release(run.slot_name or run.job.slot.name, run.pk, run.job_id)
    log.warning("run %s handed back to the queue: %s", run.pk, why)
    transaction.on_commit(lambda: services.dispatch(run))
    return True


def wake(run_ids: list[int]) -> None:
    """One immediate admission attempt for each run (no retry chain of its own).

    Made here and now by the caller (the slot worker that just freed the place), so the
    place is taken again within milliseconds instead of after a hop through the dispatch
    queue, which is longest exactly when many runs wait.  An attempt that fails for any
    reason is handed to the dispatch queue as a "kick" task instead.
    """
    from jobs.tasks import start

    for pk in run_ids:
        try:
            start(pk, kick=True)
        except Exception:  # noqa: BLE001 - the dispatch queue gets the attempt instead
            log.exception("inline admission attempt for run %s failed; sending a kick", pk)
            start.apply_async((pk,), {"kick": True}, queue=settings.DISPATCH_QUEUE)


def runs_that_fit(slot: ExecutionSlot, store: LeaseStore) -> list[int]:
    """Waiting runs of ``slot`` to wake now: those that would get a place, greedily in line order
    (what acquire does), minus those already woken and not back yet; they are marked woken."""
    return store.fits(slot.name, max_jobs=slot.max_concurrent, memory_budget_mb=slot.memory_budget_mb,
                      cpu_budget=slot.cpu_percent, limit=slot.max_concurrent)


def wake_after_release(slot: str, job_id: int | None = None, store: LeaseStore | None = None, *,
                       slot_waiters: bool = True, slot_row: ExecutionSlot | None = None) -> list[int]:
    """A place in ``slot`` (or an instance of ``job_id``) was freed: wake the runs that may use it.

    The waiting runs the freed room fits (so a small run behind a big one is not left to
    its next poll), and the queued runs of the job itself, its dependents and its blocking
    partners that wait for the job rather than for room (those in a slot's line are woken
    by that slot's releases).  Each gets one immediate attempt; admission decides.
    ``slot_waiters=False`` wakes only the latter (the slot's line was woken when the place
    itself was freed); ``slot_row`` saves reading the slot's limits.
    """
    try:
        store = store or LeaseStore()
        ids: list[int] = []
        if slot_waiters:
            if slot_row is None or slot_row.name != slot:
                slot_row = ExecutionSlot.objects.filter(name=slot).first()
            if slot_row is not None:
                ids += runs_that_fit(slot_row, store)
        if job_id is not None:
            related = dependencies.related_job_ids(job_id)
            queued = dict(JobRun.objects.filter(job_id__in=related, state=RunState.QUEUED)
                          .order_by("scheduled_for").values_list("pk", "slot_name")[:WAKE_HEAD * 4])
            in_line = store.waiting_in_line({pk: name for pk, name in queued.items() if name})
            ids += [pk for pk in queued if pk not in in_line][:WAKE_HEAD]
        ids = list(dict.fromkeys(ids))
        wake(ids)
        return ids
    except Exception:  # noqa: BLE001 - waking is a shortcut: the retry chains get there anyway
        log.exception("could not wake the runs waiting for slot %s", slot)
        return []
