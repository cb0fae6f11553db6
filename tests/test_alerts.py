"""Anomaly alerts, deduplication, acknowledgement, reminders, recovery, channels, breaker, missed."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import alerts, beat_sync, health
from jobs.models import Alert, Job, JobRun, NotificationAttempt, RunState
from tests.helpers import finish_run

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 recording JSON POSTs; the first ``fail_first`` get a 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict, dict]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((json.loads(body), dict(self.headers), body))
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"boom" if failing else b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"

    @property
    def payloads(self) -> list[dict]:
        return [p for p, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(settings):
    receiver = WebhookReceiver()
    settings.ALERT_WEBHOOK_URLS = [receiver.url]
    settings.NOTIFY_DELIVERY = "inline"
    settings.NOTIFY_BACKOFF_SECONDS = 0.01
    yield receiver
    receiver.close()


@pytest.fixture
def traveller():
    with time_machine.travel(T0, tick=False) as t:
        yield t




def learned(make_job, traveller, name: str = "backup", **fields) -> Job:
    job = make_job(name, **fields)
    for i in range(10):
        finish_run(job, traveller, duration=2.0 + (i % 3) * 0.05, memory=50.0 + (i % 2))
    job.refresh_from_db()
    assert job.baseline_duration_p50 is not None
    return job


def open_alerts(job: Job, type_: str) -> list[Alert]:
    return list(Alert.objects.filter(job=job, type=type_, resolved_at__isnull=True))


def test_slow_run_alert_is_deduplicated_silenced_by_ack_and_resolved_by_recovery(make_job, traveller, webhook):
    job = learned(make_job, traveller)
    finish_run(job, traveller, duration=10.5)  # 5x the median
    finish_run(job, traveller, duration=11.0)
    [alert] = open_alerts(job, Alert.Type.HIGH_DURATION)
    assert alert.count == 2 and alert.severity == "warning"
    assert "5.4x its median" in alert.message or "5.5x its median" in alert.message
    sent = [p for p in webhook.payloads if p["alert"]["type"] == "high_duration"]
    assert len(sent) == 1 and sent[0]["reason"] == "new"
    assert sent[0]["text"].startswith("[WARNING] backup: high_duration")
    assert sent[0]["alert"]["job"] == "backup"

    # Still open and unacknowledged an hour later: a reminder.
    traveller.shift(dt.timedelta(minutes=61))
    assert alerts.renotify_due() == 1
    assert [p["reason"] for p in webhook.payloads if p["alert"]["type"] == "high_duration"] == ["new", "reminder"]

    # Acknowledged: no more reminders, even much later; the alert stays open.
    user = get_user_model().objects.create_user("ops", password="x")
    assert alerts.acknowledge(alert, user, note="looking into the NFS mount")
    assert not alerts.acknowledge(alert, user, note="again")
    alert.refresh_from_db()
    assert alert.acknowledged_by == user and alert.ack_note == "looking into the NFS mount"
    assert alert.acknowledged_at == timezone.now()
    traveller.shift(dt.timedelta(hours=5))
    assert alerts.renotify_due() == 0
    finish_run(job, traveller, duration=12.0)  # counted, not re-sent
    assert len([p for p in webhook.payloads if p["alert"]["type"] == "high_duration"]) == 2
    assert open_alerts(job, Alert.Type.HIGH_DURATION)[0].count == 3

    # Back to normal: resolved automatically (and the resolution is announced).
    finish_run(job, traveller, duration=2.05)
    assert open_alerts(job, Alert.Type.HIGH_DURATION) == []
    alert.refresh_from_db()
    assert alert.resolved_at == timezone.now() and alert.dedup_key is None
    assert webhook.payloads[-1]["reason"] == "resolved" and webhook.payloads[-1]["text"].startswith("[RESOLVED]")


def test_a_run_that_succeeds_suspiciously_fast_is_flagged(make_job, traveller):
    job = learned(make_job, traveller)
    finish_run(job, traveller, duration=0.2)
    [alert] = open_alerts(job, Alert.Type.TOO_FAST)
    assert "did it really do its work" in alert.message
    assert not open_alerts(job, Alert.Type.HIGH_DURATION)
    # A failure that is quick is just a failure, not "too fast".
    finish_run(job, traveller, duration=2.0)
    assert not open_alerts(job, Alert.Type.TOO_FAST)
    finish_run(job, traveller, state=RunState.FAILED, duration=0.1, exit_code=1)
    assert not open_alerts(job, Alert.Type.TOO_FAST)


def test_memory_anomaly_and_small_wobbles_stay_quiet(make_job, traveller):
    job = learned(make_job, traveller)
    finish_run(job, traveller, duration=2.1, memory=60.0)  # +10 MB: below the absolute margin
    finish_run(job, traveller, duration=2.4, memory=51.0)  # a bit slower: below the margins
    assert not Alert.objects.filter(job=job).exists()
    finish_run(job, traveller, duration=2.0, memory=400.0)
    [alert] = open_alerts(job, Alert.Type.HIGH_MEMORY)
    assert "400.0 MB" in alert.message and alert.severity == "warning"


def test_degradation_over_time_raises_an_anomaly(make_job, traveller, settings):
    settings.BASELINE_WINDOW = 60
    settings.ANOMALY_Z = 50.0  # keep single-run alerts out of the way: this is about the trend
    job = learned(make_job, traveller, name="report")
    for _ in range(10):
        finish_run(job, traveller, duration=4.0)
    [alert] = open_alerts(job, Alert.Type.ANOMALY)
    assert "95% slower than the usual 2.05 s" in alert.message
    trend = health.performance_trends(Job.objects.filter(pk=job.pk))[0]
    assert trend["status"] == "degraded" and trend["percent_slower"] > 50
    for _ in range(10):
        finish_run(job, traveller, duration=2.0)
    assert not open_alerts(job, Alert.Type.ANOMALY)


def test_consecutive_failures_trip_the_breaker_and_pause_the_job(make_job, traveller, settings):
    settings.BREAKER_THRESHOLD = 5
    job = make_job("flaky", schedule_type="cron", cron_expression="*/5 * * * *")
    assert PeriodicTask.objects.filter(name=beat_sync.task_name(job.pk)).exists()
    for _ in range(2):
        finish_run(job, traveller, state=RunState.FAILED, exit_code=1)
    assert not open_alerts(job, Alert.Type.CONSECUTIVE_FAILURES)
    finish_run(job, traveller, state=RunState.FAILED, exit_code=1)
    assert open_alerts(job, Alert.Type.CONSECUTIVE_FAILURES)[0].severity == "error"
    finish_run(job, traveller, state=RunState.FAILED, exit_code=1)
    job.refresh_from_db()
    assert job.status == Job.Status.ACTIVE and job.health == "critical"
    finish_run(job, traveller, state=RunState.TIMED_OUT, exit_code=None)
    job.refresh_from_db()
    assert job.status == Job.Status.PAUSED and job.circuit_opened_at == timezone.now()
    assert not PeriodicTask.objects.filter(name=beat_sync.task_name(job.pk)).exists(), "beat still ticks it"
    [breaker_alert] = open_alerts(job, Alert.Type.CIRCUIT_OPEN)
    assert breaker_alert.severity == "critical" and "5 failures in a row" in breaker_alert.message

    out = StringIO()
    call_command("circuit_breaker", "--status", "--json", stdout=out)
    [row] = json.loads(out.getvalue())
    assert row["state"] == "open" and row["consecutive_failures"] == 5 and row["threshold"] == 5

    # A manual success does not close the circuit: a person decides.
    finish_run(job, traveller)
    assert open_alerts(job, Alert.Type.CIRCUIT_OPEN)
    assert Job.objects.get(pk=job.pk).status == Job.Status.PAUSED

    summary = call_command("circuit_breaker", "--reset", "--job", "flaky", stdout=StringIO())
    assert "breaker reset (was open)" in summary
    job.refresh_from_db()
    assert job.status == Job.Status.ACTIVE and job.consecutive_failures == 0 and job.circuit_opened_at is None
    assert PeriodicTask.objects.filter(name=beat_sync.task_name(job.pk)).exists()
    assert not open_alerts(job, Alert.Type.CIRCUIT_OPEN)


def test_per_job_threshold_zero_disables_the_breaker(make_job, traveller, settings):
    settings.BREAKER_THRESHOLD = 2
    job = make_job("tolerated", circuit_breaker_threshold=0)
    for _ in range(4):
        finish_run(job, traveller, state=RunState.FAILED, exit_code=1)
    job.refresh_from_db()
    assert job.status == Job.Status.ACTIVE and job.consecutive_failures == 4


def test_webhook_failures_are_retried_and_recorded(make_job, traveller, settings):
    receiver = WebhookReceiver(fail_first=2)
    settings.ALERT_WEBHOOK_URLS = [receiver.url]
    webhook_secret = secrets.token_hex(16)
    settings.ALERT_WEBHOOK_SECRET = webhook_secret
    settings.NOTIFY_DELIVERY = "inline"
    settings.NOTIFY_BACKOFF_SECONDS = 0.01
    try:
        job = make_job("broken")
        finish_run(job, traveller, state=RunState.FAILED, exit_code=3)
    finally:
        receiver.close()
    alert = Alert.objects.get(job=job, type=Alert.Type.FAILURE)
    attempts = list(NotificationAttempt.objects.filter(alert=alert).order_by("attempt"))
    assert [(a.attempt, a.ok, a.status_code) for a in attempts] == [(1, False, 500), (2, False, 500), (3, True, 200)]
    assert "500" in attempts[0].error
    # The secret part of the URL is not stored.
    assert attempts[0].target.endswith("/...") and "secret-token" not in attempts[0].target
    payload, headers, body = receiver.requests[-1]
    assert payload["alert"]["type"] == "failure" and payload["alert"]["severity"] == "error"
    expected = "sha256=" + hmac.new(webhook_secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-SmartCron-Signature"] == expected


def test_an_unreachable_channel_never_blocks_the_run(make_job, traveller, settings):
    settings.ALERT_WEBHOOK_URLS = ["http://127.0.0.1:9/nothing-listens-here"]
    settings.NOTIFY_DELIVERY = "inline"
    settings.NOTIFY_MAX_ATTEMPTS = 2
    settings.NOTIFY_BACKOFF_SECONDS = 0.01
    job = make_job("unlucky")
    run = finish_run(job, traveller, state=RunState.FAILED, exit_code=1)
    assert JobRun.objects.get(pk=run.pk).state == RunState.FAILED
    assert list(NotificationAttempt.objects.values_list("ok", flat=True)) == [False, False]


def test_email_channel_uses_the_django_mail_backend(make_job, traveller, settings):
    settings.ALERT_EMAILS = ["ops@example.com", "oncall@example.com"]
    settings.NOTIFY_DELIVERY = "inline"
    job = make_job("mailer")
    finish_run(job, traveller, state=RunState.FAILED, exit_code=2)
    [message] = mail.outbox
    assert message.to == ["ops@example.com", "oncall@example.com"]
    assert message.subject.startswith("[Smart Cron] [ERROR] mailer: failure")
    assert "exit 1" in message.body or "exit code 2" in message.body
    assert NotificationAttempt.objects.get().ok


def test_info_alerts_are_recorded_but_not_sent_and_escalation_is(make_job, traveller, webhook):
    job = make_job("quiet")
    alerts.raise_alert(job, Alert.Type.ANOMALY, Alert.Severity.INFO, "quiet: unstable")
    assert webhook.payloads == []
    alerts.raise_alert(job, Alert.Type.ANOMALY, Alert.Severity.WARNING, "quiet: degraded")
    assert [p["reason"] for p in webhook.payloads] == ["escalated"]


def test_a_job_that_silently_stops_running_is_overdue_and_alerted(make_job, traveller):
    job = make_job("every5", schedule_type="cron", cron_expression="*/5 * * * *", start_window_seconds=60)
    finish_run(job, traveller)  # 08:01, as a manual run would
    health.watchdog()
    job.refresh_from_db()
    assert job.next_due_at == T0 + dt.timedelta(minutes=5)
    assert health.health_summary()[0]["execution_status"] == "ok"
    # Nothing runs for a while (beat down): overdue after the start window and the grace.
    traveller.shift(dt.timedelta(minutes=8))
    health.watchdog()
    [row] = health.health_summary()
    assert row["execution_status"] == "overdue" and row["health"] == "warning" and row["overdue"]
    [alert] = open_alerts(job, Alert.Type.MISSED)
    assert "a run was due at 2026-03-02 08:05:00" in alert.message
    health.watchdog()
    assert Alert.objects.get(pk=alert.pk).count == 1  # not bumped every minute
    assert Job.objects.get(pk=job.pk).health == "warning"
    # It runs again: no longer overdue, alert resolved by the success.
    finish_run(job, traveller)
    health.watchdog()
    assert health.health_summary()[0]["execution_status"] == "ok"
    assert not open_alerts(job, Alert.Type.MISSED)


def test_a_new_alert_is_one_insert_and_a_stale_open_alerts_dict_still_bumps(make_job, traveller):
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    job = make_job("racy")
    with transaction.atomic():
        with CaptureQueriesContext(connection) as ctx:
            first = alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "racy: exit 1", open_alerts={})
        assert len(ctx.captured_queries) == 1, ctx.captured_queries
        assert first.pk and Alert.objects.get(pk=first.pk).message == "racy: exit 1"
        # A dict that missed the alert (another worker opened it): the insert hits the unique
        # dedup key, the transaction goes on and the open alert is bumped instead.
        traveller.shift(dt.timedelta(minutes=1))
        again = alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "racy: exit 2", open_alerts={})
        assert again.pk == first.pk
        known = {Alert.Type.FAILURE: Alert.Severity.ERROR}
        alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "racy: exit 3", open_alerts=known)
        assert Job.objects.filter(pk=job.pk).exists()  # the transaction is still usable
    [alert] = open_alerts(job, Alert.Type.FAILURE)
    assert (alert.count, alert.message, alert.first_seen) == (3, "racy: exit 3", T0)
    assert alert.last_seen == T0 + dt.timedelta(minutes=1) and alert.job_id == job.pk and alert.run_id is None
