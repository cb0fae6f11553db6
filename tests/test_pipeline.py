"""The whole flow of a run through real Redis, real Celery workers and real processes."""

import datetime as dt
import time

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs import services
from jobs.models import Alert, Job, JobRun, RunState
from jobs.tasks import tick
from tests.conftest import pids_alive
from tests.helpers import wait_for

pytestmark = [pytest.mark.workers, pytest.mark.django_db(transaction=True)]


def final_run(run_id: int, timeout: float = 60) -> JobRun:
    def done():
        run = JobRun.objects.get(pk=run_id)
        return run if run.is_final else None

    return wait_for(done, timeout, 0.1, f"run {run_id} to finish")


def next_second(offset: float = 2.0) -> dt.datetime:
    return (timezone.now() + dt.timedelta(seconds=offset)).replace(microsecond=0) + dt.timedelta(seconds=1)


def test_a_run_starts_on_its_planned_second(make_job, workers, scripts_root):
    stamp = scripts_root / "stamp-planned"
    job = make_job("planned", f"#!/bin/bash\ndate +%s.%N > {stamp}\n", slot="light")
    workers.start_stack()
    planned = next_second()
    run, _ = services.create_run(job, planned)
    services.dispatch(run)
    run = final_run(run.pk)
    assert run.state == RunState.SUCCEEDED, run.error
    actual = float(stamp.read_text())
    late = actual - planned.timestamp()
    assert 0 <= late < 0.25, f"script started {late * 1000:.1f} ms after its planned second"
    assert run.queue_wait_s is not None and run.queue_wait_s < 0.25


def test_a_second_tick_for_the_same_minute_makes_no_second_run(make_job, workers):
    job = make_job("twice", schedule_type="cron", cron_expression="* * * * *", wait_seconds=59, slot="light")
    workers.start_stack()
    tick(job.pk)
    tick(job.pk)
    tick.apply(args=(job.pk,))
    # One run for this minute's second 59 and, planned ahead, one for the next minute's.
    runs = list(JobRun.objects.filter(job=job).order_by("scheduled_for"))
    assert len(runs) == 2
    assert [r.scheduled_for.second for r in runs] == [59, 59]
    assert runs[1].scheduled_for - runs[0].scheduled_for == dt.timedelta(minutes=1)


def test_a_run_planned_ahead_is_cancelled_when_its_job_is_paused(make_job, workers, tmp_path):
    stamp = tmp_path / "ran"
    job = make_job("paused", f"#!/bin/bash\ntouch {stamp}\n", schedule_type="cron", cron_expression="* * * * *",
                   slot="light")
    workers.start_stack()
    planned = next_second() + dt.timedelta(seconds=2)
    run, _ = services.create_run(job, planned)  # as a tick planning ahead does
    services.dispatch(run)
    job.status = Job.Status.PAUSED
    job.save()
    run = final_run(run.pk)
    assert run.state == RunState.CANCELLED
    assert "set to paused after this run was planned" in run.error
    assert not stamp.exists()


def test_a_failing_script_is_recorded_with_exit_code_and_tail(make_job, workers):
    job = make_job("fails", "#!/bin/bash\necho 'connecting to db'\necho 'fatal: refused' >&2\nexit 4\n")
    workers.start_stack()
    run, _ = services.run_now(job)
    run = final_run(run.pk)
    assert run.state == RunState.FAILED
    assert run.exit_code == 4
    assert "fatal: refused" in run.output_tail
    assert run.duration_s is not None and run.finished_at is not None and run.worker_host
    # The run's row turns final first; the job's bookkeeping and alerts follow right after.
    wait_for(lambda: Alert.objects.filter(job=job, type=Alert.Type.FAILURE, resolved_at__isnull=True).exists(),
             10, message="the failure alert")
    assert Alert.objects.filter(job=job, type=Alert.Type.FAILURE, resolved_at__isnull=True).count() == 1
    job.refresh_from_db()
    assert job.consecutive_failures == 1 and job.last_state == RunState.FAILED


def test_timeout_kills_a_backgrounded_grandchild(make_job, workers, scripts_root):
    pidfile = scripts_root / "grandchild.pid"
    body = f"#!/bin/bash\nsetsid sleep 300 &\necho $! > {pidfile}\nsleep 300 &\necho $! >> {pidfile}\nsleep 300\n"
    job = make_job("hangs", body, timeout_seconds=2)
    workers.start_stack()
    run, _ = services.run_now(job)
    run = final_run(run.pk)
    assert run.state == RunState.TIMED_OUT
    pids = [int(p) for p in pidfile.read_text().split()]
    assert pids_alive(pids) == []
    wait_for(lambda: Alert.objects.filter(job=job, type=Alert.Type.TIMEOUT).exists(), 10, message="the timeout alert")


def test_memory_hog_is_killed_and_recorded(make_job, workers):
    body = ("#!/usr/bin/env python3\nimport time\na = bytearray(300 * 1024 * 1024)\n"
            "a[::4096] = b'x' * len(a[::4096])\ntime.sleep(30)\n")
    job = make_job("hog", body, memory_limit_mb=120, slot="heavy")
    workers.start_stack()
    run, _ = services.run_now(job)
    run = final_run(run.pk)
    assert run.state == RunState.KILLED_MEMORY
    assert run.peak_memory_mb > 120
    assert "memory limit" in run.error


def test_run_job_command_waits_for_the_result(make_job, workers, capsys):
    make_job("hello", "#!/bin/bash\necho hello-from-script\n", slot="light")
    workers.start_stack()
    summary = call_command("run_job", "--job", "hello", "--wait", "--timeout", "60")
    out = capsys.readouterr().out
    assert "hello-from-script" in out or "hello-from-script" in (summary or "")
    assert JobRun.objects.get(job__name="hello").state == RunState.SUCCEEDED


def test_kill_job_stops_a_running_script(make_job, workers, scripts_root):
    pidfile = scripts_root / "killme.pid"
    job = make_job("long", f"#!/bin/bash\necho $$ > {pidfile}\nsleep 300\n")
    workers.start_stack()
    run, _ = services.run_now(job)
    wait_for(lambda: JobRun.objects.get(pk=run.pk).state == RunState.RUNNING and pidfile.exists(), 30)
    call_command("kill_job", "--job", "long")
    run = final_run(run.pk, 30)
    assert run.state == RunState.CANCELLED
    assert pids_alive([int(pidfile.read_text())]) == []


def test_a_run_past_its_start_window_is_missed_not_dropped(make_job, workers):
    job = make_job("late", start_window_seconds=5)
    workers.start_stack()
    run, _ = services.create_run(job, timezone.now() - dt.timedelta(seconds=30))
    services.dispatch(run)
    run = final_run(run.pk)
    assert run.state == RunState.MISSED
    wait_for(lambda: Alert.objects.filter(job=job, type=Alert.Type.MISSED).exists(), 10, message="the missed alert")


def test_root_is_refused_unless_allowed(make_job, workers, slots):
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to matter")
    job = make_job("as-root", "#!/bin/bash\nid -u\n")
    workers.start("dispatch", ["dispatch"], 4).wait_ready()
    workers.start("default", ["default"], 2, SMARTCRON_ALLOW_ROOT="0").wait_ready()
    run, _ = services.run_now(job)
    run = final_run(run.pk)
    assert run.state == RunState.FAILED
    assert "refusing to run a script as root" in run.error


@pytest.mark.slow
def test_beat_ticks_a_job_at_second_7_of_the_minute(make_job, workers, worker_env, scripts_root, tmp_path):
    """The real thing: django-celery-beat -> tick -> start -> execute, wait_seconds=7."""
    import subprocess
    import sys
    from pathlib import Path

    from jobs.beat_sync import sync_all

    stamp = scripts_root / "stamp-beat"
    job = make_job("every-minute", f"#!/bin/bash\ndate +%s.%N >> {stamp}\n", schedule_type="cron",
                   cron_expression="* * * * *", wait_seconds=7, slot="light")
    sync_all()
    workers.start_stack()
    beat_log = open(tmp_path / "beat.log", "wb")
    beat = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "-A", "smartcron_project", "beat",
                             "-l", "info", "--pidfile=", "-s", str(tmp_path / "beat-schedule")],
                            env=worker_env, stdout=beat_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = wait_for(lambda: JobRun.objects.filter(job=job, state=RunState.SUCCEEDED).first(), 140, 0.5,
                       "a beat-ticked run")
    finally:
        beat.terminate()
        beat.wait(10)
        beat_log.close()
    assert run.scheduled_for.second == 7
    started = float(stamp.read_text().split()[0])
    late = started - run.scheduled_for.timestamp()
    assert 0 <= late < 0.25, f"{late * 1000:.1f} ms late"
    time.sleep(0.1)
