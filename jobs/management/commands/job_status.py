from django.db.models import Count, Q

from jobs.management.commands._base import JobCommand, run_dict, table
from jobs.models import ACTIVE_STATES, Job, JobRun


class Command(JobCommand):
    help = "Status of one job (--job) or of all: active runs, last result, next runs."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", help="Job name (default: all jobs).")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        if opts["job"]:
            job = self.get_job(opts["job"])
            active = [
                run_dict(r) for r in JobRun.objects.select_related("job").filter(job=job, state__in=ACTIVE_STATES)
            ]
            last = JobRun.objects.select_related("job").filter(job=job).exclude(state__in=ACTIVE_STATES).first()
            data = {
                "job": job.name,
                "enabled": job.enabled,
                "status": job.status,
                "health": job.health,
                "consecutive_failures": job.consecutive_failures,
                "active_runs": active,
                "last_run": run_dict(last) if last else None,
                "next_runs": [t.isoformat() for t in job.next_runs(5)] if job.schedulable else [],
            }
            if opts["json"]:
                self.emit_json(data)
                return ""
            for key, value in data.items():
                self.stdout.write(f"{key:22} {value}")
            return ""
        jobs = Job.objects.annotate(active=Count("runs", filter=Q(runs__state__in=ACTIVE_STATES))).order_by("name")
        data = [
            {
                "job": j.name,
                "enabled": j.enabled,
                "status": j.status,
                "health": j.health,
                "active_runs": j.active,
                "last_state": j.last_state,
                "last_run_at": j.last_run_at,
            }
            for j in jobs
        ]
        if opts["json"]:
            self.emit_json(data)
            return ""
        self.stdout.write(
            table(
                [
                    [
                        d["job"],
                        d["status"],
                        d["health"],
                        d["active_runs"],
                        d["last_state"] or "-",
                        d["last_run_at"] or "-",
                    ]
                    for d in data
                ],
                ["job", "status", "health", "active", "last", "last run at"],
            )
        )
        return ""
