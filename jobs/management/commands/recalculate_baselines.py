"""Recompute job baselines on demand (they are also recomputed every N successful runs)."""

from __future__ import annotations

from jobs import stats
from jobs.baselines import recalculate
from jobs.conf import conf
from jobs.management.commands._base import JobCommand, table
from jobs.models import Job


class Command(JobCommand):
    help = "Recompute the duration/memory baseline (median, p95, MAD) of one job (--job) or of all jobs."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", help="Job name (default: all jobs).")
        parser.add_argument("--rebuild-stats", action="store_true",
                            help="First rebuild the run statistics (counters, hourly buckets) from the run history: "
                                 "after an upgrade or an import. Run it while the jobs are quiet.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        jobs = Job.objects.filter(pk=self.get_job(opts["job"]).pk) if opts["job"] else Job.objects.all()
        counted = stats.rebuild(jobs) if opts["rebuild_stats"] else None
        results = recalculate(jobs)
        updated = sum(r["status"] == "updated" for r in results)
        summary = (f"{len(results)} job(s): {updated} baseline(s) recomputed, {len(results) - updated} still learning "
                   f"(fewer than {conf.BASELINE_MIN_RUNS} successful runs)")
        if counted is not None:
            summary += f"; statistics rebuilt from {counted} run(s)"
        if opts["json"]:
            self.emit_json({"summary": summary, "jobs": results})
            return ""
        rows = [[r["job"], r["status"], r["runs"], _f(r.get("duration_p50")), _f(r.get("duration_p95")),
                 _f(r.get("duration_mad")), _f(r.get("memory_p50")), _f(r.get("memory_p95"))] for r in results]
        if rows:
            self.stdout.write(table(rows, ["job", "status", "runs", "dur p50 s", "dur p95 s", "dur MAD", "mem p50 MB",
                                           "mem p95 MB"]))
        return summary


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
