import time

from django.core.management.base import CommandError

from jobs import services
from jobs.management.commands._base import JobCommand, run_dict
from jobs.models import JobRun


class Command(JobCommand):
    help = "Start a job now (through admission, like a scheduled run); --wait follows it to the end."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", required=True, help="Job name.")
        parser.add_argument("--wait", action="store_true", help="Wait until the run reaches a final state.")
        parser.add_argument("--timeout", type=float, default=3600, help="With --wait: give up after this many s.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        job = self.get_job(opts["job"])
        run, _ = services.run_now(job)
        if not opts["wait"]:
            if opts["json"]:
                self.emit_json(run_dict(run))
                return ""
            return f"run {run.pk} of {job.name} queued (planned {run.scheduled_for:%H:%M:%S} UTC)"
        deadline = time.monotonic() + opts["timeout"]
        last = None
        while time.monotonic() < deadline:
            run = JobRun.objects.select_related("job").get(pk=run.pk)
            if run.state != last and not opts["json"]:
                self.stderr.write(f"run {run.pk}: {run.state}")
                last = run.state
            if run.is_final:
                break
            time.sleep(0.2)
        else:
            raise CommandError(f"run {run.pk} still {run.state} after {opts['timeout']} s (is a worker running?)")
        if opts["json"]:
            self.emit_json(run_dict(run, output=True))
            return ""
        if run.output_tail:
            self.stdout.write(run.output_tail.rstrip())
        return (f"run {run.pk} {run.state}: exit {run.exit_code}, {run.duration_s or 0:.2f} s, "
                f"peak {run.peak_memory_mb or 0:.1f} MB, cpu {run.cpu_seconds or 0:.2f} s {run.error}").rstrip()
