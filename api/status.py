"""Read models shared by the API and the dashboard: live slot usage, health, trends.

``slots.status.slot_usage()`` and ``jobs.health`` are written by other parts of the
project; they are used when present (looked up at call time), and slot usage falls
back to the lease store when they are not.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from types import ModuleType
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


def optional_module(name: str) -> ModuleType | None:
    """Import ``name`` if it exists; a module that exists but fails to import still raises."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, list | tuple | set):
        return len(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _from_provider(status: SlotStatus, data: dict[str, Any]) -> None:
    """Take the live figures from a ``slot_usage()`` record (key names tolerated loosely)."""
    running = _count(data.get("running_count", data.get("running", data.get("holders"))))
    memory = _float(data.get("memory_in_use_mb", data.get("memory_mb")))
    if running is not None:
        status.running = running
        status.live = True
    if memory is not None:
        status.memory_in_use_mb = memory
    cpu = _float(data.get("cpu_in_use"))
    if cpu is not None:
        status.cpu_in_use = cpu
    waiting = _count(data.get("waiting_count", data.get("waiting")))
    if waiting is not None:
        status.waiting = waiting
    for attr, key in (("running_runs", "running"), ("waiting_runs", "waiting")):
        value = data.get(key)
        if isinstance(value, list):
            setattr(status, attr, [v for v in value if isinstance(v, dict)])


def slot_overview() -> list[SlotStatus]:
    """Every slot with its limits, runs holding a lease, memory in use and runs waiting."""
    waiting = dict(JobRun.objects.filter(state=RunState.QUEUED).order_by().values("slot_name")
                   .annotate(n=Count("id")).values_list("slot_name", "n"))
    out = [SlotStatus(name=s.name, description=s.description, enabled=s.enabled, max_concurrent=s.max_concurrent,
                      memory_budget_mb=s.memory_budget_mb, cpu_percent=s.cpu_percent, waiting=waiting.get(s.name, 0))
           for s in ExecutionSlot.objects.order_by("name")]
    provider = optional_module("slots.status")
    if provider is not None and hasattr(provider, "slot_usage"):
        try:
            records = {str(d.get("name", d.get("slot"))): d for d in provider.slot_usage() if isinstance(d, dict)}
        except Exception as exc:  # noqa: BLE001 - an operator page must render without live figures
            log.warning("slots.status.slot_usage() failed: %s", exc)
            records = {}
        for status in out:
            if status.name in records:
                _from_provider(status, records[status.name])
        if all(s.live for s in out):
            return out
    _from_leases([s for s in out if not s.live])
    return out


def _from_leases(statuses: list[SlotStatus]) -> None:
    if not statuses:
        return
    try:
        from slots.leases import LeaseStore

        store = LeaseStore()
        for status in statuses:
            usage = store.usage(status.name)
            status.running = len(usage.holders)
            status.memory_in_use_mb = round(usage.memory_in_use_mb, 1)
            status.cpu_in_use = round(usage.cpu_in_use, 1)
            status.live = True
    except Exception as exc:  # noqa: BLE001 - Redis down: show the limits, say why the rest is missing
        for status in statuses:
            status.error = f"live usage unavailable ({exc.__class__.__name__})"


class MetricsUnavailable(RuntimeError):
    """jobs.health is not installed (yet)."""


def health_summary(jobs_qs=None) -> list[dict[str, Any]]:
    module = optional_module("jobs.health")
    if module is None:
        raise MetricsUnavailable("health metrics are not available on this server (jobs.health is missing)")
    return list(module.health_summary(jobs_qs=jobs_qs))


def performance_trends(jobs_qs=None) -> list[dict[str, Any]]:
    module = optional_module("jobs.health")
    if module is None:
        raise MetricsUnavailable("performance trends are not available on this server (jobs.health is missing)")
    return list(module.performance_trends(jobs_qs=jobs_qs))
