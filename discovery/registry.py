"""Create or update Job rows from discovered scripts, idempotently.

Rules (see docs/discovery.md):
- a job is matched to a script by its resolved script path;
- a matching job that was registered by hand (``auto_discovered=False``) is reported
  as skipped and never modified;
- fields listed in ``Job.manual_fields`` are never overwritten; the schedule fields
  move together, so a hand-set schedule is kept whole;
- new jobs start disabled in "testing" (unless ``enable``), with ``auto_discovered=True``;
- auto-discovered jobs whose script is gone are flagged ``script_missing=True``,
  never deleted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.utils import timezone

from discovery.scanner import DiscoveredScript, is_within, with_hash
from jobs.models import Job
from slots.models import ExecutionSlot

# The Job fields discovery decides (all of them operator fields, so manual_fields can pin them).
DISCOVERED_FIELDS = (
    "description", "category", "priority", "interpreter", "args", "working_dir", "schedule_type",
    "cron_expression", "timezone", "slot", "cpu_weight", "memory_weight", "timeout_seconds", "memory_limit_mb",
    "expected_duration_s", "expected_memory_mb",
)
# A schedule is one decision: if the operator pinned any part of it, discovery keeps all of it
# (replacing only the cron expression under a hand-set schedule type would make a hybrid).
SCHEDULE_FIELDS = frozenset({
    "schedule_type", "cron_expression", "interval_seconds", "daily_at", "weekday", "wait_seconds", "timezone",
})

ProgressFn = Callable[[str, int, int], None]


@dataclass
class JobOutcome:
    """What happened (or would happen, in a dry run) to the job of one script."""

    action: str  # new | updated | unchanged | skipped | error
    name: str
    script_path: str
    job_id: int | None = None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept_manual: list[str] = field(default_factory=list)
    reason: str = ""
    error: str | None = None
    script: DiscoveredScript | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "name": self.name, "job_id": self.job_id, "script_path": self.script_path,
            "changes": self.changes, "kept_manual": self.kept_manual, "reason": self.reason, "error": self.error,
            "script": self.script.to_dict() if self.script else None,
        }


@dataclass
class MissingOutcome:
    """An auto-discovered job whose script no longer exists."""

    name: str
    job_id: int
    script_path: str
    newly_missing: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "job_id": self.job_id, "script_path": self.script_path,
                "newly_missing": self.newly_missing}


@dataclass
class RegistryReport:
    outcomes: list[JobOutcome] = field(default_factory=list)
    missing: list[MissingOutcome] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for o in self.outcomes if o.action == action)


def _real(path: str) -> str:
    return os.path.realpath(path) if path else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, ExecutionSlot):
        return value.name
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _same(old: Any, new: Any) -> bool:
    if isinstance(new, ExecutionSlot):
        return isinstance(old, ExecutionSlot) and old.pk == new.pk
    if isinstance(new, float) and isinstance(old, int | float):
        return math.isclose(float(old), new, rel_tol=1e-9, abs_tol=1e-9)
    return old == new


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and hasattr(exc, "message_dict"):
        return "; ".join(f"{f}: {' '.join(msgs)}" for f, msgs in exc.message_dict.items())
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return f"{type(exc).__name__}: {exc}"


def desired_values(script: DiscoveredScript, slots: dict[str, ExecutionSlot]) -> dict[str, Any]:
    """The Job field values a script calls for.  Raises KeyError for an unknown slot."""
    values: dict[str, Any] = {
        "description": script.description,
        "category": script.category,
        "priority": script.priority,
        "interpreter": script.interpreter,
        "args": script.args,
        "working_dir": script.working_dir,
        "slot": slots[script.slot],
        "cpu_weight": script.cpu_weight,
        "memory_weight": script.memory_weight,
        "timeout_seconds": script.timeout_seconds,
        "memory_limit_mb": script.memory_limit_mb,
        "expected_duration_s": script.expected_duration_s,
        "expected_memory_mb": script.expected_memory_mb,
    }
    if script.schedule:
        values.update(schedule_type=Job.ScheduleType.CRON, cron_expression=script.schedule)
    else:
        values.update(schedule_type=Job.ScheduleType.MANUAL, cron_expression="")
    if script.timezone:
        values["timezone"] = script.timezone
    return values


class Registry:
    """Applies a list of discovered scripts to the Job table (or simulates it, in a dry run)."""

    def __init__(self, *, dry_run: bool = False, enable: bool = False) -> None:
        self.dry_run = dry_run
        self.enable = enable
        self.slots = {s.name: s for s in ExecutionSlot.objects.all()}
        self.jobs = list(Job.objects.select_related("slot"))
        self.by_path: dict[str, list[Job]] = {}
        for job in self.jobs:
            self.by_path.setdefault(_real(job.script_path), []).append(job)
        self.names = {job.name for job in self.jobs}

    def run(self, scripts: Sequence[DiscoveredScript], scanned_roots: Sequence[str],
            progress: ProgressFn | None = None) -> RegistryReport:
        report = RegistryReport()
        # One transaction for the run (a crash leaves nothing half-registered), one
        # savepoint per job (one bad job is recorded as an error, the others go in).
        with nullcontext() if self.dry_run else transaction.atomic():
            for done, script in enumerate(scripts, start=1):
                report.outcomes.append(self.register(script))
                if progress:
                    progress("register", done, len(scripts))
            report.missing = self.mark_missing({s.script_path for s in scripts}, scanned_roots)
        return report

    def register(self, script: DiscoveredScript) -> JobOutcome:
        matches = self.by_path.get(script.script_path, [])
        by_hand = [j for j in matches if not j.auto_discovered]
        if by_hand:
            job = by_hand[0]
            return JobOutcome("skipped", job.name, script.script_path, job.pk,
                              reason="manually configured: registered by hand, discovery never modifies it",
                              script=script)
        try:
            values = desired_values(script, self.slots)
        except KeyError:
            return JobOutcome("error", script.name, script.script_path, matches[0].pk if matches else None,
                              error=f"slot {script.slot!r} does not exist (existing: {', '.join(sorted(self.slots))})",
                              script=script)
        if matches:
            return self.update(matches[0], script, values)
        return self.create(script, values)

    def update(self, job: Job, script: DiscoveredScript, values: dict[str, Any]) -> JobOutcome:
        pinned = set(job.manual_fields or [])
        schedule_pinned = bool(pinned & SCHEDULE_FIELDS)
        changes: dict[str, tuple[Any, Any]] = {}
        kept: list[str] = []
        for name, new in values.items():
            old = getattr(job, name)
            if _same(old, new):
                continue
            if name in pinned or (schedule_pinned and name in SCHEDULE_FIELDS):
                kept.append(name)
                continue
            changes[name] = (old, new)
        if job.script_missing:
            changes["script_missing"] = (True, False)
        outcome = JobOutcome("unchanged", job.name, script.script_path, job.pk, kept_manual=sorted(kept),
                             script=script)
        if not changes:
            return outcome
        outcome.action = "updated"
        outcome.changes = {k: {"old": _jsonable(o), "new": _jsonable(n)} for k, (o, n) in changes.items()}
        for name, (_, new) in changes.items():
            setattr(job, name, new)
        return self._save(job, outcome, update_fields=[*changes, "updated_at"])

    def create(self, script: DiscoveredScript, values: dict[str, Any]) -> JobOutcome:
        name = script.name
        reason = ""
        if name in self.names:
            # The derived name belongs to a job with another script: keep both, disambiguated.
            name = with_hash(name, script.script_path)
            reason = f"name {script.name!r} is taken by another job; using {name!r}"
            if name in self.names:
                return JobOutcome("error", script.name, script.script_path, error=f"job names {script.name!r} "
                                  f"and {name!r} are both taken by other jobs", script=script)
        job = Job(
            name=name, script_path=script.script_path, auto_discovered=True, script_missing=False,
            enabled=self.enable, status=Job.Status.ACTIVE if self.enable else Job.Status.TESTING,
            environment=dict(script.environment), run_as_user=script.run_as_user, **values,
        )
        outcome = JobOutcome("new", name, script.script_path, reason=reason, script=script)
        outcome.changes = {k: {"old": None, "new": _jsonable(v)} for k, v in values.items()}
        outcome = self._save(job, outcome)
        if outcome.action == "new":
            self.names.add(name)
            self.by_path.setdefault(script.script_path, []).append(job)
        return outcome

    def _save(self, job: Job, outcome: JobOutcome, update_fields: list[str] | None = None) -> JobOutcome:
        """full_clean then save inside a savepoint; failures become an 'error' outcome."""
        try:
            # Uniqueness and the slot's existence are already known (all job names and slots
            # were loaded up front), so skip the two per-job queries that would re-check them;
            # the unique index still catches a concurrent insert, recorded as an error below.
            job.full_clean(exclude=["slot"], validate_unique=False)
            if not self.dry_run:
                with transaction.atomic():
                    job.save(update_fields=update_fields)
                outcome.job_id = job.pk
        except (ValidationError, DatabaseError) as exc:
            outcome.action, outcome.error = "error", _error_text(exc)
        return outcome

    def mark_missing(self, found: set[str], scanned_roots: Sequence[str]) -> list[MissingOutcome]:
        """Flag auto-discovered jobs below the scanned roots whose script no longer exists."""
        missing: list[MissingOutcome] = []
        for job in self.jobs:
            if not job.auto_discovered:
                continue
            real = _real(job.script_path)
            if real in found or not any(is_within(real, r) for r in scanned_roots) or os.path.exists(real):
                continue
            missing.append(MissingOutcome(job.name, job.pk, job.script_path, newly_missing=not job.script_missing))
            if not job.script_missing and not self.dry_run:
                # update(), not save(): full_clean would refuse a job whose script is gone.
                Job.objects.filter(pk=job.pk).update(script_missing=True, updated_at=timezone.now())
        return missing


def register(scripts: Sequence[DiscoveredScript], scanned_roots: Sequence[str], *, dry_run: bool = False,
             enable: bool = False, progress: ProgressFn | None = None) -> RegistryReport:
    """Create/update the jobs of ``scripts``; flag missing ones below ``scanned_roots``."""
    return Registry(dry_run=dry_run, enable=enable).run(scripts, scanned_roots, progress)
