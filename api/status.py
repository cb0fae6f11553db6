"""Read models shared by the API and the dashboard: live slot usage, health, trends.

``slots.status.slot_usage()`` and ``jobs.health`` are written by other parts of the
project; they are used when present (looked up at call time), and slot usage falls
back to the lease store when they are not.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from django.db.models import Count, QuerySet

from jobs.models import JobRun, RunState
from slots.models import ExecutionSlot

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SlotStatus:
    name: str
    description: str
    enabled: bool
    max_concurrent: int
    memory_budget_mb: int
    cpu_percent: int
    waiting: int
    running: int | None = None
    memory_in_use_mb: float | None = None
    cpu_in_use: float | None = None
    live: bool = False
    error: str = ""
    # Detail from slots.status.slot_usage() when present: the runs holding a lease, the queue.
    running_runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    waiting_runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def running_ratio(self) -> float:
        return min(1.0, (self.running or 0) / max(self.max_concurrent, 1))

    @property
    def memory_ratio(self) -> float:
        return min(1.0, (self.memory_in_use_mb or 0.0) / max(self.memory_budget_mb, 1))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def runs_in_states(states) -> QuerySet[JobRun]:
    """Runs in any of ``states``, found through the (state, scheduled_for) index.

    Once ANALYZE has seen that nearly all runs share a few final states, SQLite's planner
    scans the whole runs table for ``state IN (...)`` (a quarter of a second with a million
    runs); a union of one equality lookup per state stays on the index.
    """
    states = list(states)
    if len(states) == 1:
        return JobRun.objects.filter(state=states[0])
    parts = [JobRun.objects.filter(state=s).order_by().values("pk") for s in states]
    return JobRun.objects.filter(pk__in=parts[0].union(*parts[1:], all=True))


def slot_overview() -> list[SlotStatus]:
    """Every slot with its limits, runs holding a lease, memory in use and runs waiting."""
    from slots.status import slot_usage

    waiting = dict(JobRun.objects.filter(state=RunState.QUEUED).order_by().values("slot_name")
                   .annotate(n=Count("id")).values_list("slot_name", "n"))
    out = [SlotStatus(name=s.name, description=s.description, enabled=s.enabled, max_concurrent=s.max_concurrent,
                      memory_budget_mb=s.memory_budget_mb, cpu_percent=s.cpu_percent, waiting=waiting.get(s.name, 0))
           for s in ExecutionSlot.objects.order_by("name")]
    try:
        records = {d["slot"]: d for d in slot_usage()}
    except Exception as exc:  # noqa: BLE001 - Redis down: show the limits, say why the rest is missing
        log.warning("live slot usage unavailable: %s", exc)
        for status in out:
            status.error = f"live usage unavailable ({exc.__class__.__name__})"
        return out
    for status in out:
        data = records.get(status.name)
        if data is not None:
            status.running = data["running_count"]
            status.memory_in_use_mb = data["memory_in_use_mb"]
            status.cpu_in_use = data["cpu_in_use"]
            status.waiting = data["waiting_count"]
            status.running_runs = data["running"]
            status.waiting_runs = data["waiting"]
            status.live = True
    return out


def health_summary(jobs_qs=None) -> list[dict[str, Any]]:
    from jobs import health

    return list(health.health_summary(jobs_qs=jobs_qs))


def performance_trends(jobs_qs=None) -> list[dict[str, Any]]:
    from jobs import health

    return list(health.performance_trends(jobs_qs=jobs_qs))
