"""Recording through real Redis, real Celery workers and real processes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from jobs import services
from jobs.models import Alert, Job, JobRun, JobStats, NotificationAttempt, RunState
from jobs.reconcile import reconcile_once
from tests.conftest import pids_alive
from tests.helpers import wait_for
from tests.test_alerts import WebhookReceiver

pytestmark = [pytest.mark.workers, pytest.mark.django_db(transaction=True)]

# Settings the hooks read inside the worker processes.
LEARN_FAST = {"SMARTCRON_BASELINE_MIN_RUNS": "5", "SMARTCRON_BASELINE_EVERY_RUNS": "5"}


def start_workers(workers, **env: str) -> None:
    started = [workers.start("dispatch", ["dispatch"], 8, **env), workers.start("default", ["default"], 5, **env),
               workers.start("heavy", ["heavy"], 2, **env)]
    for w in started:
        w.wait_ready()


def run_and_wait(job: Job, timeout: float = 60) -> JobRun:
    run, _ = services.run_now(job)

    def done():
        r = JobRun.objects.get(pk=run.pk)
        return r if r.is_final else None

    final = wait_for(done, timeout, 0.1, f"run {run.pk} of {job.name}")
    # The job's instance lease is released after the run's bookkeeping: wait for it, so
    # that the next run_now is not (rightly) skipped by the 'forbid' overlap policy.
    from slots.leases import job_key
    from slots.redis_client import get_redis

    wait_for(lambda: get_redis().zcard(job_key(job.pk)) == 0, 15, 0.05, "the job's lease to be released")
    return final


def test_a_run_that_allocates_far_more_than_its_normal_raises_high_memory(make_job, workers, scripts_root):
    flag = scripts_root / "hungry.flag"
    flag.unlink(missing_ok=True)
    body = ("#!/usr/bin/env python3\nimport os, time\n"
            f"if os.path.exists({str(flag)!r}):\n"
            "    a = bytearray(250 * 1024 * 1024)\n"
            "    a[::4096] = b'x' * len(a[::4096])\n"
            "time.sleep(0.6)\n")
    job = make_job("hungry", body, slot="heavy")
    start_workers(workers, **LEARN_FAST)
    for _ in range(5):
        run = run_and_wait(job)
        assert run.state == RunState.SUCCEEDED, run.error
        assert run.peak_memory_mb and run.peak_memory_mb < 60
    job.refresh_from_db()
    assert job.baseline_runs == 5 and job.baseline_memory_p50 < 60
    flag.write_text("1")
    run = run_and_wait(job)
    assert run.state == RunState.SUCCEEDED and run.peak_memory_mb > 200
    [alert] = Alert.objects.filter(job=job, type=Alert.Type.HIGH_MEMORY, resolved_at__isnull=True)
    assert f"run peaked at {run.peak_memory_mb:.1f} MB" in alert.message and alert.run_id == run.pk
    stats = JobStats.objects.get(job=job)
    assert stats.n_succeeded == 6 and stats.memory_count == 6 and stats.memory_sum > 200
    # Back to normal: the alert resolves itself.
    flag.unlink()
    assert run_and_wait(job).state == RunState.SUCCEEDED
    assert not Alert.objects.filter(job=job, type=Alert.Type.HIGH_MEMORY, resolved_at__isnull=True).exists()


def test_a_killed_workers_run_is_reconciled_counted_and_alerted(make_job, workers, scripts_root, settings):
    pidfile = scripts_root / "orphan.pid"
    pidfile.unlink(missing_ok=True)
    job = make_job("orphaned", f"#!/bin/bash\necho $$ > {pidfile}\nsleep 300\n")
    workers.start_stack()
    run, _ = services.run_now(job)
    wait_for(lambda: JobRun.objects.get(pk=run.pk).state == RunState.RUNNING and pidfile.exists(), 60,
             message="the run to start")
    default = next(w for w in workers.workers if w.name == "default")
    default.kill(signal.SIGKILL)  # no postrun, no task_failure: only the reconciler can tell
    pid = int(pidfile.read_text())
    try:
        time.sleep(settings.LEASE_TTL_SECONDS)

        def lost():
            reconcile_once()
            return JobRun.objects.get(pk=run.pk).state == RunState.LOST

        wait_for(lost, 60, 0.5, "the reconciler to mark the run LOST")
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)  # the orphaned script (own session) is the test's to clean
        except ProcessLookupError:
            pass
    run.refresh_from_db()
    assert "heartbeat" in run.error or "worker is gone" in run.error
    assert Alert.objects.filter(job=job, type=Alert.Type.LOST, resolved_at__isnull=True).count() == 1
    stats = JobStats.objects.get(job=job)
    assert stats.n_lost == 1 and stats.runs_total == 1
    job.refresh_from_db()
    assert job.consecutive_failures == 1 and job.health == "warning"
    wait_for(lambda: not pids_alive([pid]), 10, message="the orphan to die")


def test_a_failure_alert_reaches_the_webhook_through_the_dispatch_worker(make_job, workers):
    receiver = WebhookReceiver(fail_first=1)
    try:
        job = make_job("alerting", "#!/bin/bash\necho 'disk full' >&2\nexit 7\n")
        start_workers(workers, SMARTCRON_ALERT_WEBHOOK_URLS=receiver.url, SMARTCRON_NOTIFY_BACKOFF_SECONDS="0.5")
        run = run_and_wait(job)
        assert run.state == RunState.FAILED
        wait_for(lambda: NotificationAttempt.objects.filter(ok=True).exists(), 60, 0.2, "the webhook delivery")
    finally:
        receiver.close()
    [first, second] = NotificationAttempt.objects.order_by("attempt")
    assert (first.ok, first.status_code, second.ok, second.attempt) == (False, 500, True, 2)
    payload = receiver.payloads[-1]
    assert payload["text"].startswith("[ERROR] alerting: failure")
    assert "exit code 7" in payload["text"] and payload["alert"]["run_id"] == run.pk
