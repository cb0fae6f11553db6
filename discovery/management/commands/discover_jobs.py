"""manage.py discover_jobs: find cron scripts on disk (and in crontabs) and register them as jobs."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from discovery import crontab, registry, scanner

SCHEMA_VERSION = 1
SUMMARY_KEYS = ("found", "new", "updated", "unchanged", "skipped", "refused", "missing", "errors")
DEFAULT_CRON_DIRS = ("/etc/cron.d",)
# Auto progress only for trees where waiting is noticeable.
PROGRESS_MIN_FILES = 200


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NSTR, _NINT = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
_STRS = {"type": "array", "items": _STR}
_SCRIPT_SCHEMA = _obj({
    "path": _STR, "script_path": _STR, "root": _STR, "name": _STR, "interpreter": _STR, "description": _STR,
    "schedule": _NSTR, "schedule_source": _STR, "timezone": _NSTR, "category": _STR, "priority": _STR,
    "slot": _STR, "timeout_seconds": _INT, "memory_limit_mb": _INT, "expected_duration_s": _NUM,
    "expected_memory_mb": _NUM, "cpu_weight": _NUM, "memory_weight": _NUM, "size": _INT, "lines": _INT,
    "lines_estimated": _BOOL, "mode": _STR, "uid": _INT, "args": _STR, "working_dir": _STR, "run_as_user": _STR,
    "environment": {"type": "object", "additionalProperties": _STR}, "crontab_sources": _STRS,
    "reasons": {"type": "object", "additionalProperties": _STR}, "warnings": _STRS,
})
# The --json document (JSON Schema draft 2020-12); documented in docs/discovery.md.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    **_obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "dry_run": _BOOL,
        "enable": _BOOL,
        "roots": {"type": "array", "items": _obj({
            "pattern": _STR, "path": _NSTR,
            "status": {"enum": ["ok", "missing", "not_a_directory", "no_match"]}})},
        "summary": _obj({k: _INT for k in SUMMARY_KEYS}),
        "jobs": {"type": "array", "items": _obj({
            "action": {"enum": ["new", "updated", "unchanged", "skipped", "error"]},
            "name": _STR, "job_id": _NINT, "script_path": _STR,
            "changes": {"type": "object", "additionalProperties": _obj({"old": {}, "new": {}})},
            "kept_manual": _STRS, "reason": _STR, "error": _NSTR,
            "script": {"oneOf": [{"type": "null"}, _SCRIPT_SCHEMA]}})},
        "refused": {"type": "array", "items": _obj({
            "path": _STR, "resolved_path": _STR, "codes": _STRS, "reasons": _STRS})},
        "missing": {"type": "array", "items": _obj({
            "name": _STR, "job_id": _INT, "script_path": _STR, "newly_missing": _BOOL})},
        "errors": {"type": "array", "items": _obj({"path": _NSTR, "message": _STR})},
        "crontab": _obj({
            "enabled": _BOOL,
            "sources": {"type": "array", "items": _obj({
                "source": _STR, "kind": {"enum": ["user", "system"]},
                "status": {"enum": ["ok", "empty", "unavailable"]}, "message": _STR, "entries": _INT})},
            "entries": {"type": "array", "items": _obj({
                "source": _STR, "line": _INT, "raw": _STR, "schedule": _NSTR, "user": _NSTR, "command": _STR,
                "timezone": _NSTR, "environment": {"type": "object"}, "script": _NSTR, "interpreter": _NSTR,
                "args": _STR, "working_dir": _STR,
                "status": {"enum": ["mapped", "unmapped", "invalid", "unsupported", "refused", "duplicate",
                                    "error"]},
                "reason": _STR, "job_name": _NSTR})},
        }),
        "notes": _STRS,
        "stats": _obj({"files_seen": _INT, "dirs_seen": _INT, "dirs_pruned": _INT, "files_ignored": _INT,
                       "scan_seconds": _NUM, "register_seconds": _NUM}),
    }),
}


def _plain(text: str) -> str:
    return text


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def _safe(text: str | None) -> str:
    """Escape control characters: a file name must not be able to drive the operator's terminal."""
    return (text or "").translate(_CONTROL)


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, stream: OutputWrapper, mode: bool | None) -> None:
        self.stream = stream
        self.mode = mode  # True: always, False: never, None: when stderr is a TTY and the tree is large
        self.last = 0.0
        self.drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.mode is False or (self.mode is None and (not self.stream.isatty() or
                                                           max(done, total) < PROGRESS_MIN_FILES)):
            return
        now = time.monotonic()
        if done != total and now - self.last < 0.1:
            return
        self.last = now
        if total:
            filled = int(self.WIDTH * done / total)
            line = f"\r{phase:<9}[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} "
        else:
            line = f"\r{phase:<9}{done} candidate files "
        self.stream.write(line, style_func=_plain, ending="")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("", style_func=_plain)
            self.drawn = False


class Command(BaseCommand):
    help = (
        "Find cron scripts below the discovery roots (settings.DISCOVERY_ROOTS or --path), work out their "
        "interpreter, description, schedule, category, priority and resources from the file and its comments, "
        "and register them as jobs. New jobs start disabled in 'testing' (see --enable). Re-running is "
        "idempotent; hand-edited fields (Job.manual_fields) and jobs registered by hand are never touched. "
        "With --crontab, crontab entries are mapped to their scripts and give them their schedule. "
        "See docs/discovery.md."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--path", action="append", dest="paths", metavar="DIR",
                            help="Directory to scan instead of settings.DISCOVERY_ROOTS (repeatable).")
        parser.add_argument("--max-depth", type=int, default=None, metavar="N",
                            help=f"Directory levels below each root to scan (default {scanner.DEFAULT_MAX_DEPTH}).")
        parser.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                            help="Extra file/directory name glob to skip (repeatable), on top of the defaults.")
        parser.add_argument("--crontab", action="store_true",
                            help="Also read the user's crontab and /etc/cron.d style files and map entries "
                                 "to scripts (the crontab schedule wins).")
        parser.add_argument("--crontab-file", action="append", default=[], metavar="FILE",
                            help="Read this user-format crontab instead of running the crontab command "
                                 "(repeatable; implies --crontab).")
        parser.add_argument("--crontab-command", default="crontab -l", metavar="CMD",
                            help="Command printing the user's crontab (default: 'crontab -l').")
        parser.add_argument("--cron-dir", action="append", default=[], metavar="DIR",
                            help="/etc/cron.d style directory or system crontab file, with a user field "
                                 "(repeatable; default /etc/cron.d; implies --crontab).")
        parser.add_argument("--no-system-crontabs", action="store_true",
                            help="With --crontab, read only the user's crontab.")
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; write nothing.")
        parser.add_argument("--enable", action="store_true",
                            help="Create new jobs enabled and active (default: disabled, status 'testing').")
        parser.add_argument("--verbose", action="store_true",
                            help="Explain every decision (interpreter, schedule, category, priority, slot...).")
        parser.add_argument("--json", action="store_true",
                            help="Print the full result as JSON on stdout (schema: docs/discovery.md); the "
                                 "summary line then goes to stderr.")
        parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                            help="Force the stderr progress bar on or off (default: on for large trees on a TTY).")

    # --- orchestration ------------------------------------------------------------------
    def handle(self, *args: Any, **options: Any) -> None:
        self.options = options
        self.progress = ProgressBar(self.stderr, options["progress"])
        opts = self.scan_options()
        patterns = self.root_patterns()
        started = time.monotonic()
        result = scanner.scan(patterns, opts, self.progress)
        entries, sources = self.read_crontabs(result, opts)
        scan_seconds = time.monotonic() - started
        self.progress.close()
        started = time.monotonic()
        report = registry.register(result.scripts, result.scanned_roots, dry_run=options["dry_run"],
                                   enable=options["enable"], progress=self.progress)
        self.progress.close()
        document = self.build_document(result, report, entries, sources,
                                       {"scan_seconds": scan_seconds, "register_seconds": time.monotonic() - started})
        if options["json"]:
            self.stdout.write(json.dumps(document, indent=2, default=str))
        else:
            self.print_text(document)
        self.print_summary(document["summary"])

    def scan_options(self) -> scanner.ScanOptions:
        depth = self.options["max_depth"]
        if depth is not None and depth < 0:
            raise CommandError(f"--max-depth {depth}: must be 0 or more")
        opts = scanner.ScanOptions.from_settings(max_depth=depth)
        opts.ignore += tuple(self.options["ignore"])  # on top of the defaults and settings.DISCOVERY_IGNORE
        return opts

    def root_patterns(self) -> list[str]:
        """--path values (checked: a bad one is a CommandError), else settings.DISCOVERY_ROOTS."""
        paths = self.options["paths"]
        if not paths:
            return list(getattr(settings, "DISCOVERY_ROOTS", None) or settings.SCRIPT_ROOTS)
        script_roots = [os.path.realpath(r) for r in settings.SCRIPT_ROOTS]
        for path in paths:
            real = os.path.realpath(os.path.expanduser(path))
            if not os.path.exists(real):
                raise CommandError(f"--path {path}: does not exist")
            if not os.path.isdir(real):
                raise CommandError(f"--path {path}: is not a directory")
            if not os.access(real, os.R_OK | os.X_OK):
                raise CommandError(f"--path {path}: cannot be read")
            related = any(scanner.is_within(real, r) or scanner.is_within(r, real) for r in script_roots)
            if not related:
                raise CommandError(f"--path {path}: {real} is outside the allowed script roots "
                                   f"({', '.join(script_roots) or 'none configured'}); see SMARTCRON_SCRIPT_ROOTS")
        return [os.path.expanduser(p) for p in paths]

    def read_crontabs(self, result: scanner.ScanResult, opts: scanner.ScanOptions
                      ) -> tuple[list[crontab.CrontabEntry] | None, list[crontab.CrontabSource]]:
        o = self.options
        if not (o["crontab"] or o["crontab_file"] or o["cron_dir"]):
            return None, []
        texts: list[tuple[str, crontab.CrontabSource]] = []
        if o["crontab_file"]:
            for file in o["crontab_file"]:
                try:
                    texts.append(crontab.read_user_crontab(file=file))
                except OSError as exc:
                    raise CommandError(f"--crontab-file {file}: {exc.strerror or exc}") from None
        else:
            texts.append(crontab.read_user_crontab(shlex.split(o["crontab_command"])))
        if not o["no_system_crontabs"]:
            for directory in o["cron_dir"]:
                if not os.path.exists(directory):
                    raise CommandError(f"--cron-dir {directory}: does not exist")
            dirs = o["cron_dir"] or list(getattr(settings, "DISCOVERY_CRON_DIRS", DEFAULT_CRON_DIRS))
            for directory in dirs:
                if o["cron_dir"] or os.path.exists(directory):
                    texts.extend(crontab.read_system_crontabs(directory))
        entries: list[crontab.CrontabEntry] = []
        for text, source in texts:
            parsed = crontab.parse_crontab(text, source.source, system=source.kind == "system")
            source.entries = len(parsed)
            entries.extend(parsed)
        crontab.apply_entries(result, entries, opts)
        return entries, [s for _, s in texts]

    # --- the result document ---------------------------------------------------------------
    def build_document(self, result: scanner.ScanResult, report: registry.RegistryReport,
                       entries: list[crontab.CrontabEntry] | None, sources: list[crontab.CrontabSource],
                       timings: dict[str, float]) -> dict[str, Any]:
        errors = [e.to_dict() for e in result.errors]
        errors += [{"path": o.script_path, "message": o.error or ""} for o in report.outcomes if o.action == "error"]
        summary = {
            "found": len(result.scripts), "new": report.count("new"), "updated": report.count("updated"),
            "unchanged": report.count("unchanged"), "skipped": report.count("skipped"),
            "refused": len(result.refused), "missing": len(report.missing), "errors": len(errors),
        }
        return {
            "schema_version": SCHEMA_VERSION,
            "dry_run": bool(self.options["dry_run"]),
            "enable": bool(self.options["enable"]),
            "roots": [r.to_dict() for r in result.roots],
            "summary": summary,
            "jobs": [o.to_dict() for o in report.outcomes],
            "refused": [r.to_dict() for r in result.refused],
            "missing": [m.to_dict() for m in report.missing],
            "errors": errors,
            "crontab": {"enabled": entries is not None, "sources": [s.to_dict() for s in sources],
                        "entries": [e.to_dict() for e in entries or []]},
            "notes": result.notes,
            "stats": {"files_seen": result.files_seen, "dirs_seen": result.dirs_seen,
                      "dirs_pruned": result.dirs_pruned, "files_ignored": result.files_ignored,
                      "scan_seconds": round(timings["scan_seconds"], 3),
                      "register_seconds": round(timings["register_seconds"], 3)},
        }

    # --- text output ---------------------------------------------------------------------------
    def say(self, line: str, style: Any = _plain) -> None:
        """One output line; control characters from file names are escaped first."""
        self.stdout.write(style(_safe(line)))

    def print_text(self, doc: dict[str, Any]) -> None:
        verbose = self.options["verbose"]
        warn = self.style.WARNING
        for root in doc["roots"]:
            if root["status"] != "ok":
                self.say(f"root      {root['pattern']}: {root['status'].replace('_', ' ')}", warn)
        for job in doc["jobs"]:
            self.print_job(job, verbose)
        for item in doc["refused"]:
            self.say(f"refused   {item['path']}: {'; '.join(item['reasons'])}", warn)
        for item in doc["missing"]:
            what = "script gone, job marked script_missing" if item["newly_missing"] else "script still missing"
            self.say(f"missing   {item['name']}  {item['script_path']} ({what})", warn)
        for item in doc["errors"]:
            self.say(f"error     {item['path'] or '-'}: {item['message']}", self.style.ERROR)
        for entry in doc["crontab"]["entries"]:
            if entry["status"] not in ("mapped", "refused") or verbose:
                target = entry["job_name"] or entry["reason"]
                self.say(f"crontab   {entry['source']}:{entry['line']} {entry['status']}: {target}")
        if verbose:
            for note in doc["notes"]:
                self.say(f"note      {note}")

    def print_job(self, job: dict[str, Any], verbose: bool) -> None:
        action, script = job["action"], job["script"] or {}
        if action == "unchanged" and not verbose:
            return
        style = {"new": self.style.SUCCESS, "updated": self.style.SUCCESS, "skipped": self.style.WARNING,
                 "error": self.style.ERROR}.get(action, _plain)
        line = f"{action:<9} {job['name']}  {job['script_path']}"
        if action == "new":
            line += f"  [{script['category']}/{script['priority']}, slot {script['slot']}, " \
                    f"{script['schedule'] or 'manual'}]"
        elif action == "updated":
            line += "  (" + "; ".join(f"{k}: {v['old']!r} -> {v['new']!r}" for k, v in job["changes"].items()) + ")"
        elif action in ("skipped", "error"):
            line += f"  ({job['reason'] or job['error']})"
        if job["kept_manual"]:
            line += f"  kept by operator: {', '.join(job['kept_manual'])}"
        self.say(line, style)
        if verbose and script:
            for key, why in script["reasons"].items():
                self.say(f"    {key:<12} {self.decision_value(script, key)}{why}")
            for warning in script["warnings"]:
                self.say(f"    warning      {warning}", self.style.WARNING)

    @staticmethod
    def decision_value(script: dict[str, Any], key: str) -> str:
        """The decided value shown before its reason (reasons that already contain it show nothing)."""
        if key in ("interpreter", "category", "priority", "slot", "name"):
            return f"{script[key]}  <- "
        if key == "description" and script["description"]:
            text = script["description"]
            return f"{text[:70] + '...' if len(text) > 70 else text!r}  <- "
        return ""

    def print_summary(self, summary: dict[str, int]) -> None:
        line = "discover_jobs: " + ", ".join(f"{k} {summary[k]}" for k in SUMMARY_KEYS)
        if self.options["dry_run"]:
            line += " (dry run: nothing written)"
        out = self.stderr if self.options["json"] else self.stdout
        out.write(line, style_func=_plain)
