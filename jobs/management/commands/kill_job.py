from jobs import services
from jobs.management.commands._base import JobCommand


class Command(JobCommand):
    help = "Stop every active run of a job (waiting runs are cancelled, running ones killed with their whole tree)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", required=True, help="Job name.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        job = self.get_job(opts["job"])
        n = services.kill_job(job)
        if opts["json"]:
            self.emit_json({"job": job.name, "stopped": n})
            return ""
        return f"{n} run(s) of {job.name} stopped or cancelled"
