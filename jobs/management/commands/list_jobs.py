from jobs.management.commands._base import JobCommand, table
from jobs.models import Job


class Command(JobCommand):
    help = "List registered jobs with their schedule, slot and last result."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--enabled", action="store_true", help="Only enabled jobs.")
        parser.add_argument("--slot", help="Only jobs of this slot.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        qs = Job.objects.select_related("slot").order_by("name")
        if opts["enabled"]:
            qs = qs.filter(enabled=True)
        if opts["slot"]:
            qs = qs.filter(slot__name=opts["slot"])
        jobs = list(qs)
        if opts["json"]:
            self.emit_json(
                [
                    {
                        "name": j.name,
                        "enabled": j.enabled,
                        "status": j.status,
                        "priority": j.priority,
                        "schedule_type": j.schedule_type,
                        "cron": j.effective_cron(),
                        "interval_seconds": j.interval_seconds,
                        "wait_seconds": j.wait_seconds,
                        "timezone": j.timezone,
                        "slot": j.slot.name,
                        "script_path": j.script_path,
                        "last_state": j.last_state,
                        "last_run_at": j.last_run_at,
                        "health": j.health,
                    }
                    for j in jobs
                ]
            )
            return ""
        rows = [
            [
                j.name,
                "yes" if j.enabled else "no",
                j.status,
                (f"every {j.interval_seconds}s" if j.schedule_type == "interval" else (j.effective_cron() or "manual")),
                f":{j.wait_seconds:02d}",
                j.slot.name,
                j.last_state or "-",
            ]
            for j in jobs
        ]
        self.stdout.write(table(rows, ["name", "enabled", "status", "schedule", "second", "slot", "last"]))
        return f"{len(jobs)} job(s)"
