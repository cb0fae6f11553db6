"""Dependencies between jobs, as admission sees them.

- required (J requires D): J waits while D has a run due at or before J's planned second
  that is queued or running ("D's run of this tick goes first"); then J runs only if D's
  latest *executed* run (succeeded, failed, timed out, killed, lost; skipped, missed and
  cancelled runs did not execute and are ignored) succeeded within ``within_seconds``.
  Otherwise J's run is SKIPPED with a reason naming D and what happened.
- optional (J after D): the same wait, no success condition (ordering only).
- blocking (J and D never at the same time): symmetric; whichever is running makes the
  other wait.

The "is it running" part is also checked atomically in the lease script (the job
instance sets of D are passed as must-be-empty), so two dispatchers cannot start J and
a blocking partner in the same instant.  A dependent run waits at most until the end of
its start window, then it is MISSED.

``trigger_on_success``: when D succeeds, a run of J is created (trigger "dependency")
and dispatched; it goes through admission like any other run.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from jobs.models import ACTIVE_STATES, Job, JobDependency, JobRun, RunState

log = logging.getLogger(__name__)

# --- which jobs have links at all (asked for every run; almost always "none") -------------
# The whole link table, as (job, depends_on, kind, trigger_on_success) tuples, cached per
# process.  A change bumps a generation counter in Redis when it commits; a cached copy
# is trusted for LINKS_CACHE_SECONDS, then kept if the generation is unchanged (one GET)
# or reloaded.  So a link added in the admin applies everywhere within that time, and
# the common "this job has no links" costs no query per run.  A change that sends no
# signal (a queryset update, raw SQL) is picked up by the reload every LINKS_RELOAD_SECONDS.
LINKS_CACHE_SECONDS = 0.25
LINKS_RELOAD_SECONDS = 30.0
LINKS_GENERATION_KEY = "smartcron:links:generation"
_links_cache: dict[str, tuple] = {}
_links_lock = threading.Lock()


def _generation() -> bytes | None:
    from slots.redis_client import get_redis

    return get_redis().get(LINKS_GENERATION_KEY)


def link_rows() -> tuple[tuple[int, int, str, bool], ...]:
    """Every dependency link as (job_id, depends_on_id, kind, trigger_on_success), cached."""
    now = time.monotonic()
    with _links_lock:
        hit = _links_cache.get("rows")
    if hit is not None and now - hit[0] < LINKS_CACHE_SECONDS:
        return hit[2]
    generation = _generation()
    if hit is not None and hit[1] == generation and now - hit[3] < LINKS_RELOAD_SECONDS:
        rows, loaded = hit[2], hit[3]
    else:
        rows = tuple(JobDependency.objects.values_list("job_id", "depends_on_id", "kind", "trigger_on_success"))
        loaded = now
    with _links_lock:
        _links_cache["rows"] = (now, generation, rows, loaded)
    return rows


def _links_changed(**_kwargs) -> None:
    def bump() -> None:
        from slots.redis_client import get_redis

        with _links_lock:
            _links_cache.clear()
        try:
            get_redis().incr(LINKS_GENERATION_KEY)
        except Exception:  # noqa: BLE001 - other processes reload when their copy's time is up anyway
            log.warning("could not publish a dependency change; other processes see it within %s s",
                        LINKS_CACHE_SECONDS, exc_info=True)

    with _links_lock:
        _links_cache.clear()  # this process: at once, even before the commit
    transaction.on_commit(bump)


post_save.connect(_links_changed, sender=JobDependency, dispatch_uid="smartcron-links-changed-save")
post_delete.connect(_links_changed, sender=JobDependency, dispatch_uid="smartcron-links-changed-delete")


def has_links(job_id: int) -> bool:
    return any(job_id in (a, b) for a, b, _, _ in link_rows())

# States of a run that actually executed the script (the success condition looks at these).
EXECUTED_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.KILLED_MEMORY, RunState.LOST)


class Verdict:
    """What the dependencies say about a run: go, wait (reason), or skip (reason)."""

    def __init__(self, wait: str = "", skip: str = "") -> None:
        self.wait = wait
        self.skip = skip

    @property
    def ok(self) -> bool:
        return not self.wait and not self.skip


def links_of(job: Job) -> list[JobDependency]:
    """Every dependency link touching ``job`` (both directions), with the jobs they depend on.

    No query for the common case (the cached link table says there are none); the links
    themselves and the jobs they depend on are read fresh when there are some.
    """
    if not has_links(job.pk):
        return []
    links = list(JobDependency.objects.filter(Q(job_id=job.pk) | Q(depends_on_id=job.pk)))
    if links:
        others = Job.objects.in_bulk({d.depends_on_id for d in links})
        for d in links:
            d.depends_on = others[d.depends_on_id]
    return links


def check(run: JobRun, links: list[JobDependency] | None = None) -> Verdict:
    job = run.job
    links = links_of(job) if links is None else links
    if not links:
        return Verdict()  # the common case: one query and done
    now = timezone.now()
    for dep in links:
        if dep.job_id != job.pk or dep.kind == JobDependency.Kind.BLOCKING:
            continue
        other = dep.depends_on
        ahead = (JobRun.objects.filter(job=other, state__in=ACTIVE_STATES, scheduled_for__lte=run.scheduled_for)
                 .order_by("scheduled_for").first())
        if ahead is not None:
            return Verdict(wait=f"waiting for {dep.kind} dependency {other.name} (run {ahead.pk} is {ahead.state})")
        if dep.kind == JobDependency.Kind.REQUIRED:
            last = (JobRun.objects.filter(job=other, state__in=EXECUTED_STATES, finished_at__isnull=False)
                    .order_by("-finished_at", "-pk").first())
            if last is None:
                return Verdict(skip=f"required dependency {other.name} has never run")
            if last.state != RunState.SUCCEEDED:
                return Verdict(skip=f"required dependency {other.name}: its latest run {last.pk} {last.state} "
                                    f"at {last.finished_at:%Y-%m-%d %H:%M:%S} UTC")
            age = (now - last.finished_at).total_seconds()
            if age > dep.within_seconds:
                return Verdict(skip=f"required dependency {other.name}: last success {age:.0f} s ago, "
                                    f"older than the {dep.within_seconds} s window")
    partners = blocking_partners(job, links)
    if partners:
        running = (JobRun.objects.filter(job_id__in=partners, state__in=(RunState.ADMITTED, RunState.RUNNING))
                   .select_related("job").first())
        if running is not None:
            return Verdict(wait=f"waiting: blocking job {running.job.name} is running (run {running.pk})")
    return Verdict()


def blocking_partners(job: Job, links: list[JobDependency] | None = None) -> list[int]:
    """Jobs that must never run at the same time as ``job`` (both directions of a blocking link)."""
    links = links_of(job) if links is None else links
    return sorted({d.depends_on_id if d.job_id == job.pk else d.job_id
                   for d in links if d.kind == JobDependency.Kind.BLOCKING})


def exclusive_job_ids(job: Job, links: list[JobDependency] | None = None) -> list[int]:
    """Jobs none of whose runs may hold a lease when a run of ``job`` is admitted."""
    links = links_of(job) if links is None else links
    ordering = {d.depends_on_id for d in links if d.job_id == job.pk and d.kind != JobDependency.Kind.BLOCKING}
    return sorted(set(blocking_partners(job, links)) | ordering)


def related_job_ids(job_id: int) -> list[int]:
    """Jobs whose waiting runs may be able to start once a run of ``job_id`` ends."""
    ids = {job_id}
    for a, b, kind, _ in link_rows():
        if job_id not in (a, b):
            continue
        if kind == JobDependency.Kind.BLOCKING:
            ids.update((a, b))
        elif b == job_id:
            ids.add(a)  # a dependent of this job
    return sorted(ids)


def validate_dependency(job: Job, depends_on: Job, kind: str = JobDependency.Kind.REQUIRED,
                        pk: int | None = None) -> None:
    """Raise ValidationError (naming the cycle) if job -> depends_on is not allowed.

    For entry points that do not go through ``JobDependency.full_clean`` (an API
    serializer, a bulk import); the model's own save() runs the same check.
    """
    # The model's own rule, without saving anything.
    JobDependency(pk=pk, job=job, depends_on=depends_on, kind=kind).clean()


def on_run_finished(run: JobRun) -> None:
    """Run-finished hook: start the dependents that are triggered by this job's success."""
    from jobs import services

    if run.state != RunState.SUCCEEDED:
        return
    # Almost every job has no dependent to trigger: the cached link table says so.
    if not any(b == run.job_id and trigger and kind != JobDependency.Kind.BLOCKING
               for _, b, kind, trigger in link_rows()):
        return
    dependent_ids = list(JobDependency.objects.filter(depends_on_id=run.job_id, trigger_on_success=True)
                         .exclude(kind=JobDependency.Kind.BLOCKING).values_list("job_id", flat=True))
    if not dependent_ids:
        return
    for dependent in Job.objects.filter(pk__in=dependent_ids).select_related("slot").order_by("pk"):
        if not dependent.runnable:
            log.info("%s succeeded; dependent %s not triggered (disabled or paused)", run.job_id, dependent.name)
            continue
        new, created = services.create_run(dependent, timezone.now(), trigger=JobRun.Trigger.DEPENDENCY,
                                           idempotency_key=f"dep:{run.pk}:{dependent.pk}")
        if created:
            log.info("run %s of %s succeeded: triggered run %s of %s", run.pk, run.job_id, new.pk, dependent.name)
            transaction.on_commit(lambda new=new: services.dispatch(new))
