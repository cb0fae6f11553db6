"""Per-job health and performance trends (the same data as the dashboard and API)."""

from __future__ import annotations

from jobs.health import health_summary, performance_trends
from jobs.management.commands._base import JobCommand, table
from jobs.models import Job


class Command(JobCommand):
    help = "Health of every job (or --job): health, execution status, failures, 24 h runs; --trends: vs baseline."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", help="Job name (default: all jobs).")
        parser.add_argument("--trends", action="store_true", help="Show baseline versus recent performance instead.")
        parser.add_argument("--problems", action="store_true", help="Only jobs that are not healthy / not stable.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        jobs = Job.objects.filter(pk=self.get_job(opts["job"]).pk) if opts["job"] else None
        if opts["trends"]:
            rows = performance_trends(jobs)
            if opts["problems"]:
                rows = [r for r in rows if r["status"] in ("degraded", "unstable")]
            if opts["json"]:
                self.emit_json(rows)
                return ""
            if rows:
                self.stdout.write(table([[r["name"], r["status"], _n(r["baseline_duration_p50"]),
                                          _n(r["recent_duration_p50"]), _pct(r["percent_slower"]),
                                          _n(r["baseline_memory_p50"]), _n(r["recent_memory_p50"]),
                                          _pct(r["memory_change_pct"])] for r in rows],
                                        ["job", "trend", "base s", "recent s", "slower", "base MB", "recent MB",
                                         "mem"]))
            counts = {s: sum(r["status"] == s for r in rows) for s in ("degraded", "unstable", "stable", "learning")}
            return ", ".join(f"{n} {s}" for s, n in counts.items())
        rows = health_summary(jobs, percentiles=True)
        if opts["problems"]:
            rows = [r for r in rows if r["health"] != "healthy"]
        if opts["json"]:
            self.emit_json(rows)
            return ""
        if rows:
            self.stdout.write(table([[r["name"], r["health"], r["execution_status"], r["consecutive_failures"],
                                      r["runs_24h"], r["failures_24h"], _n(r["duration_p95_24h"]),
                                      _n(r["memory_p95_24h"]), r["open_alerts"]] for r in rows],
                                    ["job", "health", "execution", "fails", "runs 24h", "failed 24h", "p95 s",
                                     "p95 MB", "alerts"]))
        counts = {h: sum(r["health"] == h for r in rows) for h in ("critical", "warning", "healthy")}
        return ", ".join(f"{n} {h}" for h, n in counts.items())


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f}%"
