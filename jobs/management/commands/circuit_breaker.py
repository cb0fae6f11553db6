"""Inspect or reset the circuit breaker of jobs."""

from __future__ import annotations

from django.core.management.base import CommandError

from jobs import breaker
from jobs.management.commands._base import JobCommand, table
from jobs.models import Job


class Command(JobCommand):
    help = ("Circuit breaker: --status lists every job's breaker (open = paused after too many failures in a row); "
            "--reset --job NAME re-activates the job, zeroes its failure count and resolves the alert.")

    def add_arguments(self, parser) -> None:
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--status", action="store_true", help="Show the breaker state of the jobs.")
        action.add_argument("--reset", action="store_true", help="Close the breaker of --job.")
        parser.add_argument("--job", help="Job name (required with --reset; filters --status).")
        parser.add_argument("--open", action="store_true", help="With --status: only open breakers.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        if opts["reset"]:
            if not opts["job"]:
                raise CommandError("--reset needs --job NAME")
            result = breaker.reset(self.get_job(opts["job"]))
            if opts["json"]:
                self.emit_json(result)
                return ""
            state = "was open" if result["was_open"] else "was not open"
            return (f"{result['job']}: breaker reset ({state}); status {result['status']}, "
                    f"{result['alerts_resolved']} alert(s) resolved")
        jobs = Job.objects.filter(pk=self.get_job(opts["job"]).pk) if opts["job"] else Job.objects.all()
        if opts["open"]:
            jobs = jobs.filter(circuit_opened_at__isnull=False)
        rows = breaker.status(jobs)
        if opts["json"]:
            self.emit_json(rows)
            return ""
        if rows:
            self.stdout.write(table([[r["job"], r["state"], r["status"], r["consecutive_failures"],
                                      r["threshold"] or "off", r["opened_at"] or "-"] for r in rows],
                                    ["job", "breaker", "status", "failures", "threshold", "opened at"]))
        n_open = sum(r["state"] == "open" for r in rows)
        return f"{n_open} open breaker(s) among {len(rows)} job(s)"
