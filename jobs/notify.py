"""Notification channels: e-mail (Django's mail backend) and generic JSON webhooks.

Delivery never runs inside the run pipeline: :func:`enqueue` only publishes one Celery task
per channel on the dispatch queue (after the surrounding transaction commits), or starts a
thread (``NOTIFY_DELIVERY=thread``).  Each try is recorded as a NotificationAttempt; a failing
channel is retried with exponential backoff (NOTIFY_BACKOFF_SECONDS, doubled each time) up to
NOTIFY_MAX_ATTEMPTS.  The webhook body is Slack-compatible: a top-level ``text`` plus the
structured ``alert`` object for other receivers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.conf import conf, email_connection_kwargs, severity_at_least
from jobs.models import Alert, NotificationAttempt

log = logging.getLogger(__name__)

EMAIL = "email"
WEBHOOK = "webhook"


@dataclasses.dataclass(frozen=True)
class Channel:
    kind: str
    target: str  # comma separated recipients, or the webhook URL

    @property
    def redacted(self) -> str:
        """What is safe to store: webhook URLs often carry their secret in the path."""
        if self.kind == WEBHOOK:
            parts = urlsplit(self.target)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{host}{port}/..." if parts.path not in ("", "/") else f"{parts.scheme}://{host}{port}"
        return self.target[:500]


def channels() -> list[Channel]:
    """The configured channels (none by default: alerts are then only recorded)."""
    out = []
    emails = [e for e in conf.ALERT_EMAILS if e]
    if emails:
        out.append(Channel(EMAIL, ",".join(emails)))
    for url in conf.ALERT_WEBHOOK_URLS:
        if urlsplit(url).scheme in ("http", "https"):
            out.append(Channel(WEBHOOK, url))
        else:
            log.error("ignoring webhook URL with a scheme other than http(s): %s", Channel(WEBHOOK, url).redacted)
    return out


def enqueue(alert: Alert, *, reason: str = "new", claimed: bool = False) -> int:
    """Schedule the delivery of one notification of ``alert`` on every channel.

    ``claimed``: the caller already stamped ``last_notified_at`` (reminders).  Returns the
    number of channels scheduled.
    """
    chans = channels()
    if not chans:
        return 0
    if reason != NotificationAttempt.Reason.RESOLVED and not severity_at_least(alert.severity,
                                                                               conf.NOTIFY_MIN_SEVERITY):
        return 0
    if not claimed and reason != NotificationAttempt.Reason.RESOLVED:
        Alert.objects.filter(pk=alert.pk).update(last_notified_at=timezone.now())
    for channel in chans:
        args = (alert.pk, channel.kind, channel.target, reason)
        transaction.on_commit(lambda args=args: _schedule(*args))
    return len(chans)


def _schedule(alert_id: int, kind: str, target: str, reason: str) -> None:
    mode = conf.NOTIFY_DELIVERY
    try:
        if mode == "inline":
            deliver_with_retries(alert_id, kind, target, reason, sleep=time.sleep)
        elif mode == "thread":
            threading.Thread(target=deliver_with_retries, args=(alert_id, kind, target, reason),
                             kwargs={"sleep": time.sleep}, daemon=True, name=f"notify-{alert_id}").start()
        else:
            deliver_task.apply_async((alert_id, kind, target, reason, 1), queue=settings.DISPATCH_QUEUE)
    except Exception:  # noqa: BLE001 - the broker may be down; the alert row is still there
        log.exception("could not schedule %s notification of alert %s", kind, alert_id)


def backoff(attempt: int) -> float:
    """Delay before try ``attempt + 1``."""
    return conf.NOTIFY_BACKOFF_SECONDS * (2 ** (attempt - 1))


def deliver_with_retries(alert_id: int, kind: str, target: str, reason: str, *, sleep=time.sleep) -> bool:
    """Thread/inline delivery: try, wait, try again (the Celery path re-publishes instead)."""
    for attempt in range(1, conf.NOTIFY_MAX_ATTEMPTS + 1):
        ok = deliver_once(alert_id, kind, target, reason, attempt)
        if ok is not False:
            return bool(ok)
        if attempt < conf.NOTIFY_MAX_ATTEMPTS:
            sleep(backoff(attempt))
    return False


@shared_task(name="jobs.notify", ignore_result=True)
def deliver_task(alert_id: int, kind: str, target: str, reason: str, attempt: int = 1) -> str:
    ok = deliver_once(alert_id, kind, target, reason, attempt)
    if ok is False and attempt < conf.NOTIFY_MAX_ATTEMPTS:
        deliver_task.apply_async((alert_id, kind, target, reason, attempt + 1), countdown=backoff(attempt),
                                 queue=settings.DISPATCH_QUEUE)
        return f"failed, retry {attempt + 1} in {backoff(attempt):.0f} s"
    return "ok" if ok else ("skipped" if ok is None else "failed")


def deliver_once(alert_id: int, kind: str, target: str, reason: str, attempt: int = 1) -> bool | None:
    """One try, recorded.  True: delivered; False: failed; None: nothing to send any more."""
    alert = Alert.objects.select_related("job").filter(pk=alert_id).first()
    if alert is None:
        return None
    if reason == NotificationAttempt.Reason.REMINDER and (alert.acknowledged_at or alert.resolved_at):
        return None  # acknowledged or resolved while the reminder was queued
    channel = Channel(kind, target)
    payload = build_payload(alert, reason)
    status_code: int | None = None
    error = ""
    try:
        if kind == EMAIL:
            _send_email(channel, payload)
        elif kind == WEBHOOK:
            status_code = _send_webhook(channel, payload)
        else:
            raise ValueError(f"unknown channel {kind!r}")
        ok = True
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and retried
        ok = False
        error = f"{exc.__class__.__name__}: {exc}"[:2000]
        status_code = getattr(getattr(exc, "response", None), "status_code", None) or status_code
        log.warning("notification of alert %s via %s failed (try %s): %s", alert_id, channel.redacted, attempt, error)
    NotificationAttempt.objects.create(alert=alert, channel=kind, target=channel.redacted, reason=reason,
                                       attempt=attempt, ok=ok, status_code=status_code, error=error)
    return ok


def build_payload(alert: Alert, reason: str) -> dict[str, Any]:
    job = alert.job.name if alert.job_id else "system"
    if reason == NotificationAttempt.Reason.RESOLVED:
        head = f"[RESOLVED] {job}: {alert.type}"
    else:
        tag = {"escalated": " (escalated)", "reminder": " (reminder, still open)"}.get(reason, "")
        head = f"[{alert.severity.upper()}] {job}: {alert.type}{tag}"
    lines = [head, alert.message]
    if alert.count > 1:
        lines.append(f"seen {alert.count} times since {alert.first_seen:%Y-%m-%d %H:%M:%S} UTC")
    url = f"{conf.BASE_URL}/admin/jobs/alert/{alert.pk}/change/" if conf.BASE_URL else ""
    if url:
        lines.append(url)
    return {
        "text": "\n".join(lines),
        "source": "smartcron",
        "reason": reason,
        "alert": {
            "id": alert.pk, "job": job, "job_id": alert.job_id, "run_id": alert.run_id, "type": alert.type,
            "severity": alert.severity, "message": alert.message, "count": alert.count,
            "first_seen": alert.first_seen.isoformat(), "last_seen": alert.last_seen.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
            "url": url or None,
        },
    }


def _send_email(channel: Channel, payload: dict[str, Any]) -> None:
    from django.core.mail import EmailMessage, get_connection

    sender = conf.ALERT_EMAIL_FROM or settings.DEFAULT_FROM_EMAIL
    subject = f"[Smart Cron] {payload['text'].splitlines()[0]}"[:200]
    connection = get_connection(fail_silently=False, **email_connection_kwargs())
    EmailMessage(subject, payload["text"], sender, channel.target.split(","), connection=connection).send()


def _send_webhook(channel: Channel, payload: dict[str, Any]) -> int:
    import requests

    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "SmartCron-alerts/1"}
    secret = conf.ALERT_WEBHOOK_SECRET
    if secret:
        headers["X-SmartCron-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    response = requests.post(channel.target, data=body, headers=headers, timeout=conf.ALERT_WEBHOOK_TIMEOUT,
                             allow_redirects=False)
    response.raise_for_status()
    if response.status_code >= 300:  # a redirect is not a delivery
        raise requests.HTTPError(f"{response.status_code} redirect refused", response=response)
    return response.status_code
