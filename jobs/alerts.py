"""Raising, resolving and acknowledging alerts: one open alert per (job, type), with a count.

Notifications (jobs.notify) are sent when an alert opens, when it escalates to a higher
severity while unacknowledged, as reminders while it stays open and unacknowledged
(:func:`renotify_due`, run by the watchdog), and once when a notified alert is resolved.
Acknowledging an alert silences its reminders; it stays open until the job recovers.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from jobs.conf import SEVERITY_RANK, conf, severity_at_least
from jobs.models import Alert, Job, JobRun

log = logging.getLogger(__name__)


def dedup_key(job: Job | None, type_: str) -> str:
    return f"{job.pk if job else 'system'}:{type_}"


def raise_alert(job: Job | None, type_: str, severity: str, message: str, run: JobRun | None = None, *,
                open_alerts: dict[str, str] | None = None) -> Alert:
    """Open an alert, or bump the count of the open one of the same job and type.

    A bump that raises the severity of an unacknowledged alert is notified again.

    ``open_alerts`` (type -> severity of the job's open alerts, read earlier in the same
    transaction; by default the ``open_alerts`` that ``services.record_finished`` hangs on
    ``run``) saves the lookup when the type is not open: the alert is then inserted with
    one statement.  Should another worker have opened it meanwhile, the insert fails on the
    unique dedup key and the alert is bumped as usual, so a stale dict costs a statement,
    never a duplicate.
    """
    key = dedup_key(job, type_)
    now = timezone.now()
    if open_alerts is None:
        open_alerts = getattr(run, "open_alerts", None)
    if job is not None and open_alerts is not None and type_ not in open_alerts:
        alert = _insert_new(job, run, type_, severity, message, key, now)
        if alert is not None:
            log.warning("alert %s/%s: %s", key, severity, message)
            _notify(alert, "new")
            return alert
    current = Alert.objects.filter(dedup_key=key).values_list("severity", "acknowledged_at").first()
    updated = 0
    if current is not None:
        updated = Alert.objects.filter(dedup_key=key).update(
            count=F("count") + 1, last_seen=now, message=message, severity=severity, run=run)
    if not updated:
        try:
            with transaction.atomic():
                alert = Alert.objects.create(job=job, run=run, type=type_, severity=severity, message=message,
                                             dedup_key=key, first_seen=now, last_seen=now)
            log.warning("alert %s/%s: %s", key, severity, message)
            _notify(alert, "new")
            return alert
        except IntegrityError:
            # Raced with another process that opened it first: count ours on theirs.
            Alert.objects.filter(dedup_key=key).update(count=F("count") + 1, last_seen=now, message=message)
    alert = Alert.objects.get(dedup_key=key)
    if current is not None:
        old_severity, acknowledged_at = current
        if acknowledged_at is None and SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(old_severity, 0):
            log.warning("alert %s escalated %s -> %s: %s", key, old_severity, severity, message)
            _notify(alert, "escalated")
    return alert


def _insert_new(job: Job, run: JobRun | None, type_: str, severity: str, message: str, key: str,
                now: dt.datetime) -> Alert | None:
    """INSERT a new open alert in one statement; None if one with ``key`` is open already.

    No savepoint: on SQLite and MySQL/MariaDB a duplicate key rolls back the failed
    statement only, and the transaction goes on.  (Not through the ORM: a failing
    ``Model.save`` inside ``atomic`` marks the whole transaction for rollback.)
    """
    if connection.vendor not in ("mysql", "sqlite"):
        return None  # e.g. PostgreSQL aborts the transaction on any error: use the savepoint path
    alert = Alert(job=job, run=run, type=type_, severity=severity, message=message, dedup_key=key,
                  first_seen=now, last_seen=now)
    fields = [f for f in Alert._meta.concrete_fields if not f.primary_key]
    qn = connection.ops.quote_name
    # Identifiers come from the model definition only; every value is a parameter.
    sql = (f"INSERT INTO {qn(Alert._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "  # noqa: S608
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    params = [f.get_db_prep_save(getattr(alert, f.attname), connection) for f in fields]
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            alert.pk = cursor.lastrowid
    except IntegrityError:
        return None
    alert._state.adding = False
    alert._state.db = connection.alias
    return alert


def resolve_alerts(job: Job, types: list[str] | None = None) -> int:
    """Close the job's open alerts (all, or of the given types) when it recovers."""
    qs = Alert.objects.filter(job=job, resolved_at__isnull=True)
    if types:
        qs = qs.filter(type__in=types)
    notified: list[int] = []
    if _channels_configured() and conf.NOTIFY_RESOLVED:
        # Only alerts someone was told about get a "resolved" message.
        notified = list(qs.filter(last_notified_at__isnull=False).values_list("pk", flat=True))
    n = qs.update(resolved_at=timezone.now(), dedup_key=None)
    for alert in Alert.objects.filter(pk__in=notified).select_related("job"):
        _notify(alert, "resolved")
    return n


def acknowledge(alert: Alert | int, user=None, note: str = "") -> bool:
    """Acknowledge an open alert (user and note recorded): no more reminders for it.

    Returns False when it was already acknowledged.  The alert stays open until the job
    recovers (or is resolved by hand), so the health view still shows it.
    """
    pk = alert if isinstance(alert, int) else alert.pk
    now = timezone.now()
    n = Alert.objects.filter(pk=pk, acknowledged_at__isnull=True).update(
        acknowledged_at=now, acknowledged_by=user, ack_note=note or "")
    if n and isinstance(alert, Alert):
        alert.acknowledged_at, alert.acknowledged_by, alert.ack_note = now, user, note or ""
    return n == 1


def acknowledge_many(alerts: QuerySet[Alert], user=None, note: str = "") -> int:
    """Bulk acknowledgement (admin action, API); returns how many changed."""
    return alerts.filter(acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user, ack_note=note or "")


def resolve(alert: Alert | int) -> bool:
    """Resolve one alert by hand."""
    pk = alert if isinstance(alert, int) else alert.pk
    return Alert.objects.filter(pk=pk, resolved_at__isnull=True).update(
        resolved_at=timezone.now(), dedup_key=None) == 1


def renotify_due(now: dt.datetime | None = None) -> int:
    """Send reminders for open, unacknowledged alerts not notified for ALERT_RENOTIFY_MINUTES."""
    minutes = conf.ALERT_RENOTIFY_MINUTES
    if not minutes or not _channels_configured():
        return 0
    now = now or timezone.now()
    due = now - dt.timedelta(minutes=minutes)
    wanted = [s for s in SEVERITY_RANK if severity_at_least(s, conf.NOTIFY_MIN_SEVERITY)]
    qs = Alert.objects.filter(resolved_at__isnull=True, acknowledged_at__isnull=True, severity__in=wanted).filter(
        Q(last_notified_at__lt=due) | Q(last_notified_at__isnull=True, first_seen__lt=due))
    sent = 0
    for alert in qs.select_related("job"):
        # Claim the reminder (two watchdogs at once must not both send it).
        claimed = Alert.objects.filter(pk=alert.pk, last_notified_at=alert.last_notified_at,
                                       acknowledged_at__isnull=True).update(last_notified_at=now)
        if claimed:
            _notify(alert, "reminder", claimed=True)
            sent += 1
    return sent


def _channels_configured() -> bool:
    from jobs import notify

    return bool(notify.channels())


def _notify(alert: Alert, reason: str, *, claimed: bool = False) -> None:
    """Hand the alert to the notification channels (never blocks or fails a run)."""
    from jobs import notify

    try:
        notify.enqueue(alert, reason=reason, claimed=claimed)
    except Exception:  # noqa: BLE001 - a channel must never break the run pipeline
        log.exception("could not enqueue notification for alert %s", alert.pk)
