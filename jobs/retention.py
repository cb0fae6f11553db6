"""Retention: archive old runs to gzip JSON lines, then delete them in short batches.

Only runs in a final state whose planned second is older than the cutoff are touched.  Each
batch (``batch_size`` rows, by ascending id) is one short transaction: read the rows, append
them to the archive as their own gzip member (flushed and fsynced), delete the same id range
with the same filter, commit.  So the table is never locked for long, and a crash loses
nothing: at worst the last batch is archived twice.  ``gzip.open(path)`` / ``zcat`` read the
concatenated members as one file.  All-time counters (JobStats) do not depend on the runs,
so the Prometheus counters survive pruning.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import stats
from jobs.conf import conf
from jobs.models import FINAL_STATES, JobRun, NotificationAttempt

log = logging.getLogger(__name__)

_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks", "": "days"}


def parse_age(text: str) -> dt.timedelta:
    """'90d', '12h', '30m', '3600s', '2w', or a bare number of days."""
    match = _AGE_RE.match(str(text))
    if not match:
        raise ValueError(f"cannot read {text!r} as an age: use e.g. 90d, 12h, 30m, 2w")
    value, unit = float(match.group(1)), match.group(2).lower()
    age = dt.timedelta(**{_UNITS[unit]: value})
    if age <= dt.timedelta(0):
        raise ValueError(f"the age must be positive, got {text!r}")
    return age


def default_archive_path(now: dt.datetime | None = None) -> Path:
    base = Path(conf.RETENTION_ARCHIVE_DIR) if conf.RETENTION_ARCHIVE_DIR else Path(settings.VAR_DIR) / "archive"
    return base / f"runs-{(now or timezone.now()):%Y%m%dT%H%M%SZ}.jsonl.gz"


ARCHIVE_FIELDS: tuple[str, ...] = tuple(f.attname for f in JobRun._meta.concrete_fields)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as one complete gzip member, durable before the caller deletes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "ab") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
            for row in rows:
                gz.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, separators=(",", ":")).encode())
                gz.write(b"\n")
        raw.flush()
        os.fsync(raw.fileno())


def prune(older_than: dt.timedelta, *, archive: Path | None = None, batch_size: int | None = None,
          dry_run: bool = False, now: dt.datetime | None = None,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Archive (when ``archive`` is given) and delete final runs planned before now - older_than.

    Returns pruned (rows deleted), archived (rows written), batches, cutoff, archive, seconds,
    and the housekeeping counts stats_hours_deleted and notification_attempts_deleted.
    """
    now = now or timezone.now()
    cutoff = now - older_than
    batch_size = batch_size or conf.RETENTION_BATCH_SIZE
    old = JobRun.objects.filter(scheduled_for__lt=cutoff, state__in=FINAL_STATES)
    expected = old.count()
    result: dict[str, Any] = {"cutoff": cutoff, "eligible": expected, "pruned": 0, "archived": 0, "batches": 0,
                              "archive": str(archive) if archive and expected else None, "dry_run": dry_run,
                              "stats_hours_deleted": 0, "notification_attempts_deleted": 0}
    if dry_run:
        return result
    started = time.monotonic()
    last_pk = 0
    while True:
        with transaction.atomic():
            rows = list(old.filter(pk__gt=last_pk).order_by("pk").values(*ARCHIVE_FIELDS, "job__name")[:batch_size])
            if not rows:
                break
            lo, hi = rows[0]["id"], rows[-1]["id"]
            if archive is not None:
                _append(archive, rows)
                result["archived"] += len(rows)
            _, per_model = old.filter(pk__gte=lo, pk__lte=hi).delete()
            deleted = per_model.get(JobRun._meta.label, 0)
            if deleted != len(rows):
                # Cannot happen for final, old rows; refuse to go on rather than lose data.
                raise RuntimeError(f"pruning ids {lo}..{hi}: archived {len(rows)} rows but {deleted} matched; "
                                   "rolled back")
        last_pk = hi
        result["pruned"] += deleted
        result["batches"] += 1
        if progress:
            progress(result["pruned"], expected)
    result["stats_hours_deleted"] = stats.prune_hours(conf.STATS_HOURS_KEPT, now)
    result["notification_attempts_deleted"] = NotificationAttempt.objects.filter(created_at__lt=cutoff).delete()[0]
    result["seconds"] = round(time.monotonic() - started, 3)
    log.info("pruned %s run(s) planned before %s in %s batch(es)%s", result["pruned"], cutoff, result["batches"],
             f", archived to {archive}" if result["archived"] else "")
    return result


def read_archive(path: Path) -> list[dict[str, Any]]:
    """All rows of an archive (tests, restores)."""
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@shared_task(name="jobs.prune_history", ignore_result=True)
def prune_task() -> dict[str, Any]:
    """The daily retention pass (RETENTION_DAYS; 0 keeps everything)."""
    days = conf.RETENTION_DAYS
    if not days:
        return {"skipped": "SMARTCRON_RETENTION_DAYS=0"}
    return prune(dt.timedelta(days=days), archive=default_archive_path())
