"""Fetch a peer server's schedule, show where it is busy, and plan our jobs around it."""

from __future__ import annotations

import datetime as dt
import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from discovery import peer


def _status(load: int, peak: int) -> str:
    if load == 0:
        return "clear"
    return "busy" if peak and load >= max(2, peak * 0.6) else "medium"


class Command(BaseCommand):
    help = ("Fetch the peer server's schedule (GET <peer>/api/v1/schedule with a read-only key), validate and cache "
            "it, print its busiest times and our schedule against its load; --reoptimize plans our jobs around it.")

    def add_arguments(self, parser) -> None:
        from slots import planner

        parser.add_argument("--url", help="Peer schedule URL (default SMARTCRON_PEER_URL).")
        parser.add_argument("--cached", action="store_true", help="Do not fetch; use the last good cached schedule.")
        parser.add_argument("--reoptimize", action="store_true",
                            help="Re-plan our jobs' start seconds with the peer's load counted as fixed.")
        parser.add_argument("--apply", action="store_true", help="With --reoptimize: write the new start seconds.")
        parser.add_argument("--load-model", choices=planner.LOAD_MODELS, default="p95",
                            help="With --reoptimize: p95 boxes (default) or survival curves, as optimize_schedule "
                                 "(see docs/planning.md).")
        parser.add_argument("--top", type=int, default=10, help="How many busiest minutes to list (default 10).")
        parser.add_argument("--plot", help="With --reoptimize: write the before/after/peer load picture (SVG).")
        parser.add_argument("--json", action="store_true", help="Print everything as JSON.")

    def handle(self, *args, **opts) -> str:
        if opts["apply"] and not opts["reoptimize"]:
            raise CommandError("--apply needs --reoptimize")
        if opts["load_model"] != "p95" and not opts["reoptimize"]:
            raise CommandError("--load-model needs --reoptimize")
        if opts["cached"]:
            schedule, error = peer.load_cache(), None
            if schedule is None:
                raise CommandError(f"no cached peer schedule at {peer.cache_path()}")
        else:
            url = opts["url"] or settings.PEER_URL
            if not url:
                raise CommandError("no peer URL: give --url or set SMARTCRON_PEER_URL")
            schedule, error = peer.refresh(url)
            if error:
                self.stderr.write(f"peer fetch failed: {error}")
            if schedule is None:
                raise CommandError(f"peer fetch failed and no earlier schedule is cached: {error}")
        report = {"peer": {"server": schedule.server, "url": schedule.url, "fetched_at": schedule.fetched_at,
                           "total_active_jobs": len(schedule.jobs),
                           "busiest": peer.busiest_minutes(schedule, opts["top"])},
                  "error": error}
        report["ours"] = self.our_schedule(schedule, opts)
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2, default=str))
            return ""
        self.print_report(report)
        return ""

    def our_schedule(self, schedule: peer.PeerSchedule, opts) -> dict:
        from jobs import schedule as sched
        from slots import planner
        from slots.workload import database_workload

        jobs, rows = database_workload(self.stderr)
        result: dict = {"jobs": []}
        offsets = {pj.name: pj.wait_seconds for pj in jobs}
        if opts["reoptimize"] and jobs:
            plan = planner.optimize(jobs, peer.peer_plan_jobs(schedule), load_model=opts["load_model"])
            offsets = {a.name: a.offset_s for a in plan.assignments}
            result["plan"] = {"before": plan.before.peaks().as_dict(), "after": plan.after.peaks().as_dict(),
                              "lower_bound": plan.bound.as_dict(), "moves": len(plan.moves)}
            if opts["plot"]:
                planner.svg_plot(plan.before, plan.after, plan.peer, opts["plot"])
                result["plot"] = opts["plot"]
            if opts["apply"]:
                changed = 0
                for job in rows:
                    new = offsets[job.name] % 60
                    if job.wait_seconds != new:
                        job.wait_seconds = new
                        job.save(update_fields=["wait_seconds", "updated_at"])
                        changed += 1
                result["applied"] = changed
        from django.utils import timezone

        now = timezone.now()
        # Peer load at second resolution, over each of our runs (max while it runs).
        peer_prof = planner.peer_profile(peer.peer_plan_jobs(schedule)) if schedule.jobs else None
        peak = peer_prof.peak_jobs if peer_prof is not None else 0
        for pj in jobs:
            offset = offsets[pj.name]
            horizon = now + dt.timedelta(days=8)
            if pj.cron:
                nxt = next(iter(sched.cron_fires_between(pj.cron, pj.tz, now, horizon)), None)
            else:
                nxt = next(iter(sched.interval_points_between(pj.interval_s, 0, now, horizon)), None)
            when = (nxt + dt.timedelta(seconds=offset)) if nxt else None
            load_jobs, load_mem = 0, 0.0
            if when is not None and peer_prof is not None:
                sod = when.hour * 3600 + when.minute * 60 + when.second
                idx = [(sod + k) % peer_prof.cycle_s for k in range(max(1, int(round(pj.duration_s))))]
                load_jobs = int(peer_prof.jobs[idx].max())
                load_mem = round(float(peer_prof.memory[idx].max()), 1)
            result["jobs"].append({"task": pj.name, "time": f"{when:%H:%M:%S}" if when else "-",
                                   "cron": pj.cron or f"every {pj.interval_s}s", "wait_seconds": offset % 60,
                                   "peer_load_jobs": load_jobs, "peer_load_memory_mb": load_mem,
                                   "status": _status(load_jobs, peak)})
        return result

    def print_report(self, report: dict) -> None:
        p = report["peer"]
        self.stdout.write(f"Peer {p['server'] or '?'} ({p['url']}), fetched {p['fetched_at']}")
        self.stdout.write(f"Total active jobs on the peer: {p['total_active_jobs']}")
        self.stdout.write("\nBusiest times on the peer (UTC):")
        self.stdout.write(f"  {'time':6} {'load':>5} {'memory MB':>10}  jobs starting")
        for row in p["busiest"]:
            names = ", ".join(row["starting"][:6]) + (" ..." if len(row["starting"]) > 6 else "")
            self.stdout.write(f"  {row['minute']:6} {row['jobs']:>5} {row['memory_mb']:>10.0f}  {names}")
        ours = report["ours"]
        if "plan" in ours:
            b, a, lb = ours["plan"]["before"], ours["plan"]["after"], ours["plan"]["lower_bound"]
            applied = f", {ours['applied']} applied" if "applied" in ours else ""
            self.stdout.write(
                f"\nRe-planned with the peer as fixed load: peak runs {b['peak_jobs']} -> {a['peak_jobs']} "
                f"(bound {lb['peak_jobs']:.0f}), peak memory {b['peak_memory_mb']:.0f} -> "
                f"{a['peak_memory_mb']:.0f} MB (bound {lb['peak_memory_mb']:.0f}); "
                f"{ours['plan']['moves']} move(s){applied}")
        self.stdout.write("\nOur schedule against the peer's load while each run lasts (next run, UTC):")
        self.stdout.write(f"  {'task':30} {'time':9} {'cron':16} {'peer load':>9}  status")
        for row in ours["jobs"]:
            self.stdout.write(f"  {row['task'][:30]:30} {row['time']:9} {row['cron'][:16]:16} "
                              f"{row['peer_load_jobs']:>9}  {row['status']}")
