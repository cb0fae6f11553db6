"""Archive and delete old runs (also scheduled daily: SMARTCRON_RETENTION_DAYS)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from jobs import retention
from jobs.conf import conf
from jobs.management.commands._base import JobCommand


class Command(JobCommand):
    help = ("Move runs in a final state planned more than --older-than ago to a gzip JSON-lines archive, then delete "
            "them in short batches (by id ranges).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--older-than", required=True, help="Age like 90d, 12h, 2w (a bare number means days).")
        parser.add_argument("--archive", help="Archive file (.jsonl.gz; appended to if it exists). "
                                              "Default: a new file in SMARTCRON_RETENTION_ARCHIVE_DIR or var/archive.")
        parser.add_argument("--no-archive", action="store_true", help="Delete without archiving.")
        parser.add_argument("--batch-size", type=int, default=None,
                            help=f"Rows per transaction (default {conf.RETENTION_BATCH_SIZE}).")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be pruned.")
        parser.add_argument("--quiet", action="store_true", help="No progress lines.")
        self.add_json(parser)

    def handle(self, *args, **opts) -> str:
        try:
            age = retention.parse_age(opts["older_than"])
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        if opts["archive"] and opts["no_archive"]:
            raise CommandError("--archive and --no-archive exclude each other")
        if opts["batch_size"] is not None and opts["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        archive = None if opts["no_archive"] else Path(opts["archive"]) if opts["archive"] else \
            retention.default_archive_path()
        quiet = opts["quiet"] or opts["json"]

        def progress(done: int, total: int) -> None:
            if not quiet:
                self.stdout.write(f"  {done}/{total} run(s) pruned")

        result = retention.prune(age, archive=archive, batch_size=opts["batch_size"], dry_run=opts["dry_run"],
                                 progress=progress)
        if opts["json"]:
            self.emit_json(result)
            return ""
        if opts["dry_run"]:
            return f"dry run: {result['eligible']} run(s) planned before {result['cutoff']:%Y-%m-%d %H:%M:%S} UTC"
        where = f", archived to {result['archive']}" if result["archived"] else ""
        return (f"pruned {result['pruned']} run(s) planned before {result['cutoff']:%Y-%m-%d %H:%M:%S} UTC in "
                f"{result['batches']} batch(es){where} ({result['seconds']} s)")
