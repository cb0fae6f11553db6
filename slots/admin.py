from __future__ import annotations

import time
from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from slots.models import ExecutionSlot

# The changelist asks for several columns of each row; one look-up per slot and second.
_CACHE: dict[str, tuple[float, dict[str, Any] | str]] = {}
_CACHE_SECONDS = 1.0


def _usage(slot: ExecutionSlot) -> dict[str, Any] | str:
    """Live usage of one slot, or why it cannot be shown (the page must render without Redis)."""
    hit = _CACHE.get(slot.name)
    if hit and time.monotonic() - hit[0] < _CACHE_SECONDS:
        return hit[1]
    from slots.status import slot_usage  # admission, host guard, Redis: loaded when the page is shown

    try:
        rows = slot_usage(slot.name)
        value: dict[str, Any] | str = rows[0] if rows else "unknown slot"
    except Exception as exc:  # noqa: BLE001 - the admin page must render even if Redis is down
        value = f"Redis unavailable: {exc.__class__.__name__}"
    _CACHE[slot.name] = (time.monotonic(), value)
    return value


@admin.register(ExecutionSlot)
class ExecutionSlotAdmin(admin.ModelAdmin):
    list_display = ("name", "max_concurrent", "memory_budget_mb", "cpu_percent", "enabled", "running", "memory",
                    "waiting")
    search_fields = ("name",)
    readonly_fields = ("live_leases", "waiting_runs")
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled")}),
        ("Limits (cluster-wide)", {"fields": ("max_concurrent", "memory_budget_mb", "cpu_percent")}),
        ("Live usage", {"fields": ("live_leases", "waiting_runs")}),
    )

    def _live(self, slot: ExecutionSlot) -> dict[str, Any] | str:
        return _usage(slot)

    @admin.display(description="running")
    def running(self, slot: ExecutionSlot) -> str:
        u = self._live(slot)
        return u if isinstance(u, str) else f"{u['running_count']}/{slot.max_concurrent}"

    @admin.display(description="memory in use (expected peaks)")
    def memory(self, slot: ExecutionSlot) -> str:
        u = self._live(slot)
        return "-" if isinstance(u, str) else f"{u['memory_in_use_mb']:.0f}/{slot.memory_budget_mb} MB"

    @admin.display(description="waiting")
    def waiting(self, slot: ExecutionSlot) -> str:
        u = self._live(slot)
        return "-" if isinstance(u, str) else str(u["waiting_count"])

    @admin.display(description="running now (leases)")
    def live_leases(self, slot: ExecutionSlot) -> str:
        if not slot.pk:
            return "-"
        u = self._live(slot)
        if isinstance(u, str):
            return u
        if not u["running"]:
            return "nothing running"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} MB</td><td>{} s</td><td>{}</td></tr>",
            ((r["run_id"], r["job"], r["priority"], f"{r['expected_memory_mb']:.0f}", r["lease_expires_in_s"],
              "paused by host guard" if r["paused"] else r["worker_host"]) for r in u["running"]))
        return format_html("<table><tr><th>run</th><th>job</th><th>priority</th><th>expected peak</th>"
                           "<th>lease expires in</th><th>host</th></tr>{}</table>", rows)

    @admin.display(description="waiting for admission")
    def waiting_runs(self, slot: ExecutionSlot) -> str:
        if not slot.pk:
            return "-"
        u = self._live(slot)
        if isinstance(u, str):
            return u
        if not u["waiting"]:
            return "nobody waiting"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} s</td><td>{}</td></tr>",
            ((w["run_id"], w["job"], w["priority"], "-" if w["position"] is None else w["position"] + 1,
              w["waiting_s"], w["reason"]) for w in u["waiting"]))
        return format_html("<table><tr><th>run</th><th>job</th><th>priority</th><th>in line</th><th>waiting</th>"
                           "<th>reason</th></tr>{}</table>", rows)
