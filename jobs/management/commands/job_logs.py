from jobs.management.commands._base import JobCommand, run_dict
from jobs.models import JobRun


class Command(JobCommand):
    help = "Show the last runs of a job with their output tail."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", required=True, help="Job name.")
        parser.add_argument("--last", type=int, default=5, help="How many runs (default 5).")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        job = self.get_job(opts["job"])
        runs = list(
            JobRun.objects.select_related("job").filter(job=job).order_by("-scheduled_for")[: max(1, opts["last"])]
        )
        if opts["json"]:
            self.emit_json([run_dict(r, output=True) for r in runs])
            return ""
        for run in runs:
            self.stdout.write(
                f"=== run {run.pk} planned {run.scheduled_for:%Y-%m-%d %H:%M:%S} UTC: {run.state} "
                f"exit={run.exit_code} {run.duration_s or 0:.2f}s {run.peak_memory_mb or 0:.1f}MB"
            )
            if run.error:
                self.stdout.write(f"error: {run.error}")
            if run.output_tail:
                self.stdout.write(run.output_tail.rstrip())
        return f"{len(runs)} run(s)"
