"""``manage.py optimize_schedule``: plan every job's start second to flatten the load peaks.

Reads the jobs from the database (``Job.objects.schedulable()``) or a workload file
(``--input``), runs :func:`slots.planner.optimize` and prints before/after peaks, the
lower bound and the moves.  See docs/planning.md for the model and the JSON formats.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from jobs.schedule import MAX_INTERVAL_SECONDS, MIN_INTERVAL_SECONDS, ScheduleError, normalize_cron, validate_timezone
from slots import planner
from slots.workload import database_workload

JOB_KEYS = {"name", "cron", "interval_s", "tz", "wait_seconds", "window_s", "duration_s", "memory_mb", "slot", "pinned"}
REQUIRED = ("name", "duration_s", "memory_mb")


def _fail(where: str, message: str) -> CommandError:
    return CommandError(f"{where}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def parse_job(raw: Any, where: str, *, peer: bool) -> planner.PlanJob:
    """Validate one job object of a workload file; CommandError names the field and why."""
    if not isinstance(raw, dict):
        raise _fail(where, f"must be an object, got {type(raw).__name__}")
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        where = f"{where} ({name!r})"
    unknown = sorted(set(raw) - JOB_KEYS)
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(JOB_KEYS))}")
    for key in REQUIRED:
        if key not in raw:
            raise _fail(where, f"missing required field {key!r}")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, "field 'name' must be a non-empty string")
    has_cron, has_interval = raw.get("cron") is not None, raw.get("interval_s") is not None
    if has_cron == has_interval:
        raise _fail(where, "give exactly one of 'cron' and 'interval_s'")
    for key in ("duration_s", "memory_mb"):
        value = raw[key]
        if not _is_number(value):
            raise _fail(where, f"field {key!r} must be a finite number, got {value!r}")
        if value < 0:
            raise _fail(where, f"field {key!r} must not be negative, got {value!r}")
    for key in ("wait_seconds", "window_s", "interval_s"):
        if key in raw and raw[key] is not None and not _is_int(raw[key]):
            raise _fail(where, f"field {key!r} must be an integer, got {raw[key]!r}")
    for key in ("tz", "slot"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            raise _fail(where, f"field {key!r} must be a non-empty string, got {raw[key]!r}")
    if "pinned" in raw and not isinstance(raw["pinned"], bool):
        raise _fail(where, f"field 'pinned' must be true or false, got {raw['pinned']!r}")

    wait = raw.get("wait_seconds", 0)
    if not 0 <= wait <= 59:
        raise _fail(where, f"field 'wait_seconds' must be between 0 and 59, got {wait}")
    tz = raw.get("tz", "UTC")
    try:
        validate_timezone(tz)
    except ScheduleError as exc:
        raise _fail(where, f"field 'tz': {exc}") from None
    window = raw.get("window_s", planner.DEFAULT_WINDOW_S)
    cron = interval = None
    if has_cron:
        if not isinstance(raw["cron"], str):
            raise _fail(where, f"field 'cron' must be a string, got {raw['cron']!r}")
        try:
            cron = normalize_cron(raw["cron"])
        except ScheduleError as exc:
            raise _fail(where, f"field 'cron': {exc}") from None
        if not 1 <= window <= planner.MAX_WINDOW_S:
            raise _fail(where, f"field 'window_s' must be between 1 and {planner.MAX_WINDOW_S}, got {window}")
    else:
        interval = raw["interval_s"]
        if not MIN_INTERVAL_SECONDS <= interval <= MAX_INTERVAL_SECONDS:
            raise _fail(where, f"field 'interval_s' must be between {MIN_INTERVAL_SECONDS} and "
                               f"{MAX_INTERVAL_SECONDS}, got {interval}")
        if interval < 60 and wait >= interval:
            raise _fail(where, f"field 'wait_seconds' ({wait}) must be below interval_s ({interval})")
        # An interval job's start is its grid phase, which is wait_seconds: at most 60 choices.
        if not 1 <= window <= 60:
            raise _fail(where, f"field 'window_s' must be between 1 and 60 for an interval job, got {window}")
    return planner.PlanJob(
        name=name, cron=cron, interval_s=interval, tz=tz, wait_seconds=wait, window_s=window,
        duration_s=float(raw["duration_s"]), memory_mb=float(raw["memory_mb"]),
        slot=raw.get("slot", "default"), pinned=bool(raw.get("pinned", False)) or peer,
    )


def load_workload(path: Path) -> tuple[list[planner.PlanJob], list[planner.PlanJob]]:
    """Read and strictly validate a workload file: {"jobs": [...], "peer": [...]}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"--input: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"--input: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"--input: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError("--input: the top level must be an object with 'jobs' (and optionally 'peer')")
    unknown = sorted(set(data) - {"jobs", "peer"})
    if unknown:
        raise CommandError(f"--input: unknown top-level field(s) {', '.join(unknown)}; allowed: jobs, peer")
    if "jobs" not in data:
        raise CommandError("--input: missing required top-level field 'jobs'")
    out: dict[str, list[planner.PlanJob]] = {}
    for key in ("jobs", "peer"):
        items = data.get(key, [])
        if not isinstance(items, list):
            raise CommandError(f"--input: '{key}' must be a list, got {type(items).__name__}")
        parsed = [parse_job(raw, f"{key}[{i}]", peer=key == "peer") for i, raw in enumerate(items)]
        seen: set[str] = set()
        for i, job in enumerate(parsed):
            if job.name in seen:
                raise CommandError(f"--input: {key}[{i}] ({job.name!r}): duplicate name")
            seen.add(job.name)
        out[key] = parsed
    return out["jobs"], out["peer"]


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(x) for x in row)) for row in rows]
    return "\n".join(lines)


class Command(BaseCommand):
    help = ("Plan the start second of every job to flatten the peaks of concurrent runs and memory "
            "(per slot and in total), and optionally apply it. See docs/planning.md.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--input", metavar="FILE.json",
                            help="Plan the workload in this JSON file ({\"jobs\": [...], \"peer\": [...]}) "
                                 "instead of the database jobs.")
        parser.add_argument("--json", action="store_true",
                            help="Print the whole result as JSON (per-job offsets, before/after/lower_bound peaks, "
                                 "per-slot figures, duration variation).")
        parser.add_argument("--apply", action="store_true",
                            help="Write the planned wait_seconds to the database jobs (database input only).")
        parser.add_argument("--plot", metavar="FILE.svg",
                            help="Write an SVG picture of the 24 h load before and after, ours and the peer's.")
        parser.add_argument("--objective", choices=planner.OBJECTIVES, default="balanced",
                            help="balanced (default): the worst of all normalised peaks; memory or jobs: that "
                                 "resource first.")
        parser.add_argument("--samples", type=int, default=3,
                            help="Duration-variation samples for the robustness figures (default 3, 0 to skip).")
        parser.add_argument("--seed", type=int, default=0, help="Random seed of the variation samples (default 0).")
        parser.add_argument("--exact", action="store_true",
                            help="Also run the CP-SAT polishing phase on the busiest minutes (needs `pip install "
                                 "ortools`; off by default: it rarely pays, see docs/planning.md).")
        parser.add_argument("--load-model", choices=planner.LOAD_MODELS, default="p95",
                            help="What the search flattens: p95 (default), every run a box as long as its p95 "
                                 "duration; survival, every run's survival curve (the chance it still runs k "
                                 "seconds after its start) plus a variance margin: lower real peaks on large "
                                 "workloads, higher p95-box peaks (see docs/planning.md).")
        parser.add_argument("--date", metavar="YYYY-MM-DD",
                            help="Reference day for timezones and interval grids (default: today, UTC).")

    def handle(self, *args, **opts) -> None:
        day = None
        if opts["date"]:
            try:
                day = dt.date.fromisoformat(opts["date"])
            except ValueError:
                raise CommandError(f"--date: expected YYYY-MM-DD, got {opts['date']!r}") from None
        if opts["samples"] < 0:
            raise CommandError("--samples: must be 0 or more")
        if opts["input"]:
            if opts["apply"]:
                raise CommandError("--apply only works on database jobs, not with --input")
            jobs, peer = load_workload(Path(opts["input"]))
            rows = None
        else:
            jobs, rows = database_workload(self.stderr)
            peer = []
        if not jobs:
            raise CommandError("nothing to plan: no schedulable jobs" if rows is not None else
                               "nothing to plan: the input has no jobs")

        if opts["exact"] and planner._cpsat_module() is None:
            raise CommandError("--exact needs OR-Tools: pip install ortools (see docs/planning.md)")
        if opts["exact"] and opts["load_model"] != "p95":
            raise CommandError("--exact works on the p95 load model only (CP-SAT places boxes)")
        plan = planner.optimize(jobs, peer, objective=opts["objective"], day=day, load_model=opts["load_model"],
                                tune={"exact": True} if opts["exact"] else None)
        report = self.build_report(plan, jobs, peer, opts["samples"], opts["seed"], day)
        report["source"] = "file" if opts["input"] else "database"
        if opts["plot"]:
            planner.svg_plot(plan.before, plan.after, plan.peer if peer else None, opts["plot"])
            report["plot"] = str(opts["plot"])
        if opts["apply"]:
            report["applied"] = self.apply(plan, rows)
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.print_report(report, plan)

    def build_report(self, plan: planner.Plan, jobs, peer, samples: int, seed: int, day) -> dict:
        """Everything as plain data (the --json output)."""
        def section(profile: planner.LoadProfile, offsets: list[int] | None) -> dict:
            data = profile.peaks().as_dict()
            rj, rm = plan.ratio(profile)
            data["ratio_to_bound"] = {"jobs": round(rj, 4), "memory": round(rm, 4)}
            if samples:
                var = planner.sample_variation(jobs, peer, offsets, np.random.default_rng(seed), samples, day=day,
                                               bounds=cache.get("bounds"))
                cache["bounds"] = list(zip(var.bound_jobs, var.bound_memory_mb, strict=True))
                data["variation"] = var.as_dict()
            return data

        cache: dict[str, Any] = {}
        before = section(plan.before, None)
        after = section(plan.after, plan.offsets)
        job_rows = [{
            "name": a.name, "slot": a.slot, "pinned": a.pinned, "window_s": a.window_s,
            "old_wait_seconds": a.old_offset_s % 60, "old_offset_s": a.old_offset_s,
            "wait_seconds": a.wait_seconds, "offset_s": a.offset_s, "minute_shift": a.minute_shift,
            "moved": a.moved,
        } for a in plan.assignments]
        return {
            "objective": plan.objective,
            "load_model": plan.load_model,
            "cycle_s": plan.after.cycle_s,
            "jobs": job_rows,
            "moves": sum(1 for a in plan.assignments if a.moved),
            "before": before,
            "after": after,
            "lower_bound": plan.bound.as_dict(),
            "peer": {"jobs": len(peer), "peak_jobs": plan.peer.peak_jobs,
                     "peak_memory_mb": round(plan.peer.peak_memory_mb, 3)},
            "runtime_s": round(plan.runtime_s, 3),
            "stats": plan.stats,
        }

    def apply(self, plan: planner.Plan, rows) -> int:
        """Save the new wait_seconds of the moved jobs (post_save signals resync beat)."""
        from django.db import transaction

        changed = 0
        with transaction.atomic():
            for assignment, job in zip(plan.assignments, rows, strict=True):
                if assignment.pinned or assignment.wait_seconds == job.wait_seconds:
                    continue
                if assignment.minute_shift:  # cannot happen with the database's 60 s windows
                    raise CommandError(f"{job.name}: offset {assignment.offset_s}s does not fit wait_seconds")
                job.wait_seconds = assignment.wait_seconds
                job.save(update_fields=["wait_seconds", "updated_at"])
                changed += 1
        return changed

    def print_report(self, report: dict, plan: planner.Plan) -> None:
        out = self.stdout.write
        lb = report["lower_bound"]
        out(f"Planned {len(report['jobs'])} jobs ({report['peer']['jobs']} peer jobs as fixed load), "
            f"objective {report['objective']}, load model {report['load_model']}, in {report['runtime_s']:.2f} s.")
        rows = []
        for label in ("before", "after"):
            sec = report[label]
            rows.append([label, sec["peak_jobs"], f"{sec['peak_memory_mb']:,.0f}",
                         f"{sec['ratio_to_bound']['jobs']:.2f}", f"{sec['ratio_to_bound']['memory']:.2f}"])
        rows.append(["lower bound", f"{lb['peak_jobs']:.0f}", f"{lb['peak_memory_mb']:,.0f}", "1.00", "1.00"])
        out("\nPeaks over the 24 h cycle (total, peer included):")
        out(_table(rows, ["", "runs", "memory MB", "runs/bound", "memory/bound"]))
        slot_rows = []
        for slot, bound in lb["slots"].items():
            b, a = report["before"]["slots"][slot], report["after"]["slots"][slot]
            slot_rows.append([slot, b["peak_jobs"], a["peak_jobs"], f"{bound['peak_jobs']:.0f}",
                              f"{b['peak_memory_mb']:,.0f}", f"{a['peak_memory_mb']:,.0f}",
                              f"{bound['peak_memory_mb']:,.0f}"])
        out("\nPer slot:")
        out(_table(slot_rows, ["slot", "runs before", "runs after", "runs bound", "MB before", "MB after",
                               "MB bound"]))
        if "variation" in report["after"]:
            vb, va = report["before"]["variation"], report["after"]["variation"]
            out(f"\nUnder duration variation ({va['samples']} samples, lognormal, median = p95/1.6), "
                "mean peak / bound of the same sample:")
            out(_table([["before", f"{vb['ratio_jobs']:.2f}", f"{vb['ratio_memory']:.2f}"],
                        ["after", f"{va['ratio_jobs']:.2f}", f"{va['ratio_memory']:.2f}"]],
                       ["", "runs", "memory"]))
        moved = [j for j in report["jobs"] if j["moved"]]
        out(f"\nMoves ({len(moved)} of {len(report['jobs'])} jobs):")
        if moved:
            out(_table([[j["name"], j["slot"], j["old_offset_s"], j["offset_s"], j["wait_seconds"],
                         j["minute_shift"] or ""] for j in moved],
                       ["job", "slot", "from offset_s", "to offset_s", "wait_seconds", "minute shift"]))
        if "plot" in report:
            out(f"\nPicture written to {report['plot']}")
        if "applied" in report:
            out(f"\nApplied: {report['applied']} job(s) changed.")
        elif moved and report["source"] == "database":
            out("\nNothing written (use --apply to save the new wait_seconds).")
