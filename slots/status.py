"""Live slot usage, for the admin, the ``slot_status`` command, the dashboard and the API.

Everything comes from the live lease set and waiting queue in Redis plus the runs'
rows; nothing here is a counter that could drift.
"""

from __future__ import annotations

import statistics
from typing import Any

from django.utils import timezone

from jobs.models import JobRun, RunState
from slots import admission, host_guard
from slots.leases import LeaseStore
from slots.models import ExecutionSlot


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def slot_usage(slot_name: str | None = None, store: LeaseStore | None = None) -> list[dict[str, Any]]:
    """One dict per slot: limits, running runs, memory/CPU claimed, waiting runs in admission order."""
    store = store or LeaseStore()
    slots = ExecutionSlot.objects.all()
    if slot_name:
        slots = slots.filter(name=slot_name)
    paused = set(host_guard.paused_runs())
    now = timezone.now()
    out: list[dict[str, Any]] = []
    for slot in slots:
        usage = store.usage(slot.name)
        queue = store.waiting(slot.name)
        held = {h.run_id: h for h in usage.holders}
        runs = {r.pk: r for r in JobRun.objects.select_related("job").filter(pk__in=list(held))}
        running = []
        for run_id, h in held.items():
            run = runs.get(run_id)
            running.append({
                "run_id": run_id, "job": run.job.name if run else None, "state": run.state if run else None,
                "priority": run.job.priority if run else None,
                "started_at": run.started_at.isoformat() if run and run.started_at else None,
                "expected_memory_mb": round(h.memory_mb, 1), "cpu_percent": round(h.cpu, 2),
                "lease_expires_in_s": round(h.expires_at - now.timestamp(), 2), "paused": run_id in paused,
                "worker_host": run.worker_host if run else "",
            })
        queued = list(JobRun.objects.select_related("job").filter(slot_name=slot.name, state=RunState.QUEUED)
                      .order_by("scheduled_for"))
        reasons = admission.waiting_reasons([r.pk for r in queued])
        in_line = {w.run_id: i for i, w in enumerate(queue)}
        # Runs waiting for room first (in admission order), then those waiting for
        # something else (dependency, overlap, host memory), oldest first.
        queued.sort(key=lambda r: (in_line.get(r.pk, len(in_line)), r.scheduled_for))
        waiting = [{
            "run_id": r.pk, "job": r.job.name, "priority": r.job.priority,
            "scheduled_for": r.scheduled_for.isoformat(),
            "waiting_s": round((now - r.scheduled_for).total_seconds(), 1),
            "position": in_line.get(r.pk), "reason": reasons.get(r.pk, ""),
        } for r in queued]
        out.append({
            "slot": slot.name, "enabled": slot.enabled, "queue": slot.queue,
            "max_concurrent": slot.max_concurrent, "running_count": len(held),
            "memory_budget_mb": slot.memory_budget_mb, "memory_in_use_mb": round(usage.memory_in_use_mb, 1),
            "cpu_percent": slot.cpu_percent, "cpu_in_use": round(usage.cpu_in_use, 2),
            "waiting_count": len(waiting), "running": running, "waiting": waiting,
        })
    return out


def admission_latency() -> dict[str, Any]:
    """Duration of recent admission decisions (ms), as measured by the start task."""
    values = admission.latencies_ms()
    return {"samples": len(values), "p50_ms": _percentile(values, 0.5), "p99_ms": _percentile(values, 0.99),
            "mean_ms": round(statistics.fmean(values), 3) if values else None}


def hosts() -> list[dict[str, Any]]:
    """What each slot worker's host guard last reported (memory available vs reserve)."""
    reports = host_guard.guard_reports()
    paused = {}
    for report in reports:
        paused.setdefault(report["host"], host_guard.paused_runs(report["host"]))
    ordered = sorted(reports, key=lambda r: (r["host"], r["pid"]))
    return [{**r, "paused_runs": paused.get(r["host"], [])} for r in ordered]
