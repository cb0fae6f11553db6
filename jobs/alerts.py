"""Raising and resolving alerts: one open alert per (job, type), with a count."""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from jobs.models import Alert, Job, JobRun

log = logging.getLogger(__name__)


def dedup_key(job: Job | None, type_: str) -> str:
    return f"{job.pk if job else 'system'}:{type_}"


def raise_alert(job: Job | None, type_: str, severity: str, message: str, run: JobRun | None = None) -> Alert:
    """Open an alert, or bump the count of the open one of the same job and type."""
    key = dedup_key(job, type_)
    now = timezone.now()
    updated = Alert.objects.filter(dedup_key=key).update(
        count=F("count") + 1, last_seen=now, message=message, severity=severity, run=run)
    if not updated:
        try:
            with transaction.atomic():
                alert = Alert.objects.create(job=job, run=run, type=type_, severity=severity, message=message,
                                             dedup_key=key, first_seen=now, last_seen=now)
                log.warning("alert %s/%s: %s", key, severity, message)
                _notify(alert, new=True)
                return alert
        except IntegrityError:
            # Raced with another process that opened it first: count ours on theirs.
            Alert.objects.filter(dedup_key=key).update(count=F("count") + 1, last_seen=now, message=message)
    return Alert.objects.get(dedup_key=key)


def resolve_alerts(job: Job, types: list[str] | None = None) -> int:
    """Close the job's open alerts (all, or of the given types) when it recovers."""
    qs = Alert.objects.filter(job=job, resolved_at__isnull=True)
    if types:
        qs = qs.filter(type__in=types)
    return qs.update(resolved_at=timezone.now(), dedup_key=None)


def acknowledge(alert: Alert, user, note: str = "") -> bool:
    n = Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user, ack_note=note)
    return n == 1


def _notify(alert: Alert, new: bool) -> None:
    """Hand the alert to the notification channels (never blocks or fails a run)."""
    try:
        from jobs import notify
    except ImportError:
        return
    try:
        notify.enqueue(alert, new=new)
    except Exception:  # noqa: BLE001 - a channel must never break the run pipeline
        log.exception("could not enqueue notification for alert %s", alert.pk)
