from django.contrib import admin

from jobs.models import JobRun, RunState
from slots.leases import LeaseStore
from slots.models import ExecutionSlot


@admin.register(ExecutionSlot)
class ExecutionSlotAdmin(admin.ModelAdmin):
    list_display = ("name", "max_concurrent", "memory_budget_mb", "cpu_percent", "enabled", "live_usage")
    search_fields = ("name",)

    @admin.display(description="live usage (running / memory / waiting)")
    def live_usage(self, slot: ExecutionSlot) -> str:
        try:
            usage = LeaseStore().usage(slot.name)
        except Exception as exc:  # noqa: BLE001 - the admin page must render even if Redis is down
            return f"Redis unavailable: {exc.__class__.__name__}"
        waiting = JobRun.objects.filter(slot_name=slot.name, state=RunState.QUEUED).count()
        return (f"{len(usage.holders)}/{slot.max_concurrent} running, "
                f"{usage.memory_in_use_mb:.0f}/{slot.memory_budget_mb} MB, {waiting} waiting")
