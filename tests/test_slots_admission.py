"""Admission control against a real Redis and the database, without workers.

The lease script (counts, memory and CPU budgets, priority queue, expiry, fencing of
renewals), overlap policies, dependencies and cycles, the host guard's decisions and
the status views.  The end-to-end behaviour with real workers is in test_slots.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from io import StringIO

import psutil
import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.utils import timezone

from jobs import services
from jobs.models import Job, JobDependency, JobRun, RunState
from slots import admission, conf, dependencies, host_guard, procs
from slots.leases import LeaseStore, waiting_score
from slots.models import ExecutionSlot
from tests.conftest import pids_alive
from tests.helpers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

NOW = time.time


@pytest.fixture
def store(redis_client) -> LeaseStore:
    return LeaseStore()


def take(store: LeaseStore, run_id: int, *, slot: str = "s", max_jobs: int = 5, mem: float = 100, budget: float = 1000,
         cpu: float = 0, cpu_budget: float = 100, ttl: float = 30, job_id: int = 0, prio: int = 2,
         planned: float | None = None, **kw):
    return store.acquire(slot, run_id, ttl=ttl, max_jobs=max_jobs, memory_mb=mem, memory_budget_mb=budget, cpu=cpu,
                         cpu_budget=cpu_budget, job_id=job_id or 1000 + run_id,
                         waiting_score=waiting_score(prio, planned if planned is not None else run_id), **kw)


# --- the lease script ------------------------------------------------------------------------
def test_job_count_limit_and_release(store):
    assert all(take(store, i).granted for i in range(1, 6))
    refused = take(store, 6)
    assert not refused.granted and refused.reason == "jobs" and refused.holders == 5
    store.release("s", 3, 1003)
    assert take(store, 6).granted
    assert sorted(store.usage("s").holder_ids) == [1, 2, 4, 5, 6]


def test_memory_budget_counts_expected_peaks_but_an_empty_slot_takes_any_job(store):
    assert take(store, 1, mem=600).granted
    refused = take(store, 2, mem=500)
    assert (refused.granted, refused.reason, refused.memory_in_use_mb) == (False, "memory", 600.0)
    assert take(store, 3, mem=400).granted  # 1000 exactly fits
    store.release("s", 1, 1001)
    store.release("s", 3, 1003)
    store.leave_waiting("s", 2)  # run 2 gave up (it would be first in line otherwise)
    assert take(store, 4, mem=5000).granted  # alone in the slot: too big to ever fit otherwise


def test_cpu_share_counts_against_the_slot(store):
    # weight-1.0 jobs claim cpu_percent / max_concurrent each: exactly max_concurrent fit.
    claims = [80 / 5] * 5
    assert all(take(store, i, cpu=c, cpu_budget=80).granted for i, c in enumerate(claims, 1))
    store.release("s", 5, 1005)
    refused = take(store, 6, cpu=32, cpu_budget=80)  # a weight-2.0 job
    assert (refused.granted, refused.reason) == (False, "cpu")


def test_an_expired_lease_frees_its_place_and_cannot_be_renewed(store):
    assert take(store, 1, max_jobs=1, ttl=0.3).granted
    assert not take(store, 2, max_jobs=1).granted
    time.sleep(0.4)
    # The holder stopped heartbeating: its renewal is refused (fencing), the place is free.
    assert store.renew("s", 1, ttl=30, job_id=1001) is False
    assert take(store, 2, max_jobs=1).granted
    assert store.usage("s").holder_ids == [2]


def test_reap_reports_expired_holders_once(store):
    take(store, 1, ttl=0.2)
    take(store, 2, ttl=30)
    time.sleep(0.3)
    assert store.reap("s") == [1]
    assert store.reap("s") == []
    assert store.usage("s").holder_ids == [2]


def test_renew_extends_a_live_lease(store):
    take(store, 1, ttl=0.5)
    assert store.renew("s", 1, ttl=30, job_id=1001)
    time.sleep(0.6)
    assert store.holds("s", 1)


def test_rebuild_drops_claims_without_a_lease(store, redis_client):
    take(store, 1, mem=300)
    redis_client.hset("smartcron:lease:s:mem", "99", "700")  # a claim left behind by a crash
    assert take(store, 2, mem=600, max_jobs=5).reason == "memory"
    assert store.rebuild("s") == 1
    assert take(store, 2, mem=600).granted


# --- priority --------------------------------------------------------------------------------
def test_waiting_runs_are_admitted_by_priority_then_age(store):
    assert take(store, 1, max_jobs=1).granted
    # Five runs wait: (rank, planned): low is the oldest, critical the newest.
    waiting = {10: (3, 100.0), 11: (2, 300.0), 12: (2, 200.0), 13: (1, 400.0), 14: (0, 500.0)}
    for run_id, (rank, planned) in waiting.items():
        assert take(store, run_id, max_jobs=1, prio=rank, planned=planned).reason == "jobs"
    assert [w.run_id for w in store.waiting("s")] == [14, 13, 12, 11, 10]
    store.release("s", 1, 1001)
    order = []
    for _ in range(5):
        # Everybody tries, lowest priority first: only the head of the line gets in.
        for run_id in sorted(waiting, reverse=True):
            if run_id in order:
                continue
            attempt = take(store, run_id, max_jobs=1, prio=waiting[run_id][0], planned=waiting[run_id][1])
            if attempt.granted:
                order.append(run_id)
                store.release("s", run_id, 1000 + run_id)
                break
            assert attempt.reason == "priority"
    assert order == [14, 13, 12, 11, 10]


def test_a_run_ahead_that_does_not_fit_does_not_block_one_that_does(store):
    assert take(store, 1, mem=700, max_jobs=5).granted
    assert take(store, 2, mem=600, prio=0).reason == "memory"  # critical but too big for now
    assert take(store, 3, mem=200, prio=3).granted  # low, fits: nothing ahead could use the room


def test_a_vanished_waiter_stops_blocking_the_slot(store):
    take(store, 1, max_jobs=1)
    assert take(store, 2, max_jobs=1, prio=0, waiting_ttl=0.3).reason == "jobs"
    store.release("s", 1, 1001)
    assert take(store, 3, max_jobs=1, prio=3).reason == "priority"
    time.sleep(0.4)  # run 2's start task is gone: its entry expires
    assert take(store, 3, max_jobs=1, prio=3).granted
    assert store.waiting("s") == []


def test_instances_and_exclusive_jobs(store):
    assert take(store, 1, job_id=7, max_instances=1).granted
    assert take(store, 2, job_id=7, max_instances=1).reason == "instances"
    assert take(store, 3, job_id=7, max_instances=2).granted
    assert take(store, 4, job_id=7, max_instances=2).reason == "instances"
    blocked = take(store, 5, job_id=8, exclusive_with=[9, 7])
    assert (blocked.granted, blocked.reason, blocked.detail) == (False, "blocked", "2")
    assert store.waiting("s") == []  # blocked runs do not hold a place in the queue


# --- overlap, dependencies, cycles (database) -----------------------------------------------
@pytest.fixture
def job(make_job):
    def make(name: str, **fields) -> Job:
        return make_job(name, **fields)

    return make


def queued_run(job: Job, seconds_ago: float = 0.0) -> JobRun:
    run, _ = services.create_run(job, timezone.now() - dt.timedelta(seconds=seconds_ago))
    assert run.transition(RunState.PENDING, RunState.QUEUED, queued_at=timezone.now())
    run.job = Job.objects.select_related("slot").get(pk=job.pk)
    return run


def finished_run(job: Job, state: str, seconds_ago: float = 1.0) -> JobRun:
    when = timezone.now() - dt.timedelta(seconds=seconds_ago)
    return JobRun.objects.create(job=job, scheduled_for=when, state=state, finished_at=when, slot_name=job.slot.name)


def test_overlap_forbid_skips_and_allow_waits(job, redis_client):
    forbid = job("forbid", overlap_policy="forbid")
    first = queued_run(forbid, 5)
    assert admission.admit(first).admitted
    second = queued_run(forbid)
    decision = admission.admit(second)
    assert decision.final_state == RunState.SKIPPED and "overlap forbidden" in decision.reason

    allow = job("allow", overlap_policy="allow", max_instances=2)
    runs = [queued_run(allow, 10 - i) for i in range(3)]
    assert [admission.admit(r).admitted for r in runs] == [True, True, False]
    assert admission.admit(runs[2]).waiting


def test_overlap_queue_one_and_replace(job, redis_client):
    q = job("queue1", overlap_policy="queue")
    running, waiting, third = queued_run(q, 9), queued_run(q, 5), queued_run(q, 1)
    assert admission.admit(running).admitted
    assert admission.admit(waiting).waiting
    assert admission.admit(third).final_state == RunState.SKIPPED

    rep = job("replace", overlap_policy="replace")
    old = queued_run(rep, 9)
    assert admission.admit(old).admitted
    new = queued_run(rep)
    assert admission.admit(new).waiting
    assert "replaced by run" in admission.kill_reason(old.pk)


def test_required_dependency(job, redis_client):
    d = job("extract")
    j = job("load")
    JobDependency.objects.create(job=j, depends_on=d, kind="required", within_seconds=3600)
    run = queued_run(j)
    assert "has never run" in dependencies.check(run).skip
    finished_run(d, RunState.FAILED)
    assert "extract: its latest run" in dependencies.check(run).skip and "failed" in dependencies.check(run).skip
    finished_run(d, RunState.SKIPPED, 0.5)  # did not execute: does not count
    finished_run(d, RunState.SUCCEEDED, 0.2)
    assert dependencies.check(run).ok
    ahead = queued_run(d, 3)  # the dependency's run of this tick goes first
    assert "waiting for required dependency extract" in dependencies.check(run).wait
    ahead.transition(RunState.QUEUED, RunState.CANCELLED)
    JobDependency.objects.filter(job=j).update(within_seconds=0)
    assert "older than the 0 s window" in dependencies.check(run).skip
    decision = admission.admit(run)
    assert decision.final_state == RunState.SKIPPED


def test_optional_and_blocking_dependencies(job, redis_client):
    a, b, c = job("a"), job("b"), job("c")
    JobDependency.objects.create(job=b, depends_on=a, kind="optional")
    JobDependency.objects.create(job=c, depends_on=a, kind="blocking")
    assert dependencies.check(queued_run(b)).ok  # never ran: fine, ordering only
    ra = queued_run(a, 2)
    assert admission.admit(ra).admitted
    assert "waiting for optional dependency a" in dependencies.check(queued_run(b, 1)).wait
    rc = queued_run(c, 1)
    assert "blocking job a is running" in admission.admit(rc).reason
    # Symmetric: a run of ``a`` waits while ``c`` runs.
    services.close_run(ra, RunState.ADMITTED, RunState.SUCCEEDED)
    LeaseStore().release("default", ra.pk, a.pk)
    assert admission.admit(rc).admitted
    assert "blocking job c is running" in admission.admit(queued_run(a)).reason


def test_a_cycle_is_refused_naming_it(job):
    a, b, c = job("cy-a"), job("cy-b"), job("cy-c")
    JobDependency.objects.create(job=a, depends_on=b)
    JobDependency.objects.create(job=b, depends_on=c, kind="optional")
    with pytest.raises(ValidationError) as exc:
        JobDependency.objects.create(job=c, depends_on=a)
    assert "cy-c -> cy-a -> cy-b -> cy-c" in str(exc.value)
    with pytest.raises(ValidationError, match="cy-c -> cy-a -> cy-b -> cy-c"):
        dependencies.validate_dependency(c, a, "required")
    dependencies.validate_dependency(c, a, "blocking")  # mutual exclusion is not ordering


def test_the_admin_shows_a_cycle_as_a_form_error(job, rf, admin_user):
    from django.contrib import admin as django_admin

    from jobs.admin import DependencyInline

    a, b = job("ad-a"), job("ad-b")
    JobDependency.objects.create(job=a, depends_on=b)
    request = rf.post("/")
    request.user = admin_user
    inline = DependencyInline(Job, django_admin.site)
    formset_class = inline.get_formset(request, obj=b)
    prefix = formset_class.get_default_prefix()
    data = {f"{prefix}-TOTAL_FORMS": "1", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-0-depends_on": str(a.pk),
            f"{prefix}-0-kind": "required", f"{prefix}-0-within_seconds": "86400"}
    formset = formset_class(data, instance=b, prefix=prefix)
    assert not formset.is_valid()
    assert "this dependency would create a cycle: ad-b -> ad-a -> ad-b" in formset.errors[0]["depends_on"]

    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    response = client.post("/admin/jobs/jobdependency/add/", {"job": b.pk, "depends_on": a.pk, "kind": "optional",
                                                             "within_seconds": 86400})
    assert response.status_code == 200
    assert "this dependency would create a cycle: ad-b -&gt; ad-a -&gt; ad-b" in response.content.decode()


def test_trigger_on_success_creates_a_dependency_run(job, redis_client, monkeypatch):
    d, t = job("upstream"), job("downstream")
    JobDependency.objects.create(job=t, depends_on=d, trigger_on_success=True)
    dispatched = []
    monkeypatch.setattr(services, "dispatch", dispatched.append)
    run = finished_run(d, RunState.SUCCEEDED)
    dependencies.on_run_finished(run)
    dependencies.on_run_finished(run)  # a second call creates nothing more
    triggered = JobRun.objects.get(job=t)
    assert triggered.trigger == JobRun.Trigger.DEPENDENCY and dispatched == [triggered]
    dependencies.on_run_finished(finished_run(d, RunState.FAILED, 0.5))
    assert JobRun.objects.filter(job=t).count() == 1


# --- host guard ----------------------------------------------------------------------------------
def test_bad_guard_settings_are_named(monkeypatch):
    monkeypatch.setenv("SMARTCRON_HOST_GUARD_POLICY", "explode")
    monkeypatch.setattr(conf, "_cache", {})
    with pytest.raises(ImproperlyConfigured, match="SMARTCRON_HOST_GUARD_POLICY"):
        conf.check()


def test_admission_waits_only_when_every_host_serving_the_queue_is_low(redis_client, settings):
    def report(host: str, low: bool, queues=("heavy",)) -> None:
        body = {"host": host, "pid": 1, "queues": list(queues), "available_mb": 100.0 if low else 9000.0,
                "reserve_mb": 512, "low": low, "at": NOW()}
        redis_client.set(f"{host_guard.GUARD_PREFIX}{host}:1", json.dumps(body), ex=10)
        redis_client.zadd(host_guard.GUARDS, {f"{host}:1": NOW() + 10})
        host_guard._cache.clear()

    report("h1", True)
    assert "host memory below reserve on h1" in host_guard.admission_block("heavy")
    report("h2", False)
    assert host_guard.admission_block("heavy") is None
    settings.HOST_MEMORY_RESERVE_MB = 10 ** 9  # no report for "light": this host decides
    assert "below reserve" in host_guard.admission_block("light")
    settings.HOST_MEMORY_RESERVE_MB = 0
    assert host_guard.admission_block("light") is None


def _tagged_sleeper(run_id: int) -> subprocess.Popen:
    env = dict(os.environ, **{procs.TAG_VAR: procs.run_tag(run_id)})
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


def stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def becomes(pid: int, want_stopped: bool) -> None:
    # Signals are delivered asynchronously: give the kernel a moment.
    wait_for(lambda: stopped(pid) == want_stopped, 5, 0.02, f"pid {pid} stopped={want_stopped}")


def test_guard_pauses_the_newest_low_priority_job_and_resumes_it(job, redis_client, settings):
    settings.HOST_MEMORY_RESERVE_MB = 1000
    settings.HOST_GUARD_SETTLE_SECONDS = 0
    settings.HOST_GUARD_RESUME_MARGIN_MB = 100
    settings.HOST_GUARD_POLICY = "pause"
    low_old, low_new, high = job("low-old", priority="low"), job("low-new", priority="low"), job("hi", priority="high")
    procs_by_job = {}
    for i, j in enumerate((low_old, low_new, high)):
        run = queued_run(j)
        run.transition(RunState.QUEUED, RunState.RUNNING, worker_host=host_guard.HOSTNAME,
                       started_at=timezone.now() + dt.timedelta(seconds=i))
        procs_by_job[j.name] = (run, _tagged_sleeper(run.pk))
    memory = {"available": 500.0}
    guard = host_guard.HostGuard(["default"], probe=lambda: memory["available"])
    try:
        host_guard._cache.clear()
        guard.step()
        run, proc = procs_by_job["low-new"]
        becomes(proc.pid, True)
        assert host_guard.paused_runs() == [run.pk]
        assert "below reserve" in host_guard.admission_block("default")
        guard.step()  # still low: the next low-priority job is paused, never the high one
        becomes(procs_by_job["low-old"][1].pid, True)
        assert not stopped(procs_by_job["hi"][1].pid)
        memory["available"] = 1050.0  # above the reserve but inside the margin: stay paused
        guard.step()
        assert len(host_guard.paused_runs()) == 2
        memory["available"] = 5000.0
        guard.step()  # the last paused (the older job) resumes first, one per step
        becomes(procs_by_job["low-old"][1].pid, False)
        assert stopped(proc.pid)
        guard.step()
        becomes(proc.pid, False)
        assert host_guard.paused_runs() == []
        host_guard._cache.clear()
        assert host_guard.admission_block("default") is None
    finally:
        for _, p in procs_by_job.values():
            p.kill()
            p.wait()


def test_guard_kill_policy_asks_the_worker_to_kill(job, redis_client, settings):
    settings.HOST_MEMORY_RESERVE_MB = 1000
    settings.HOST_GUARD_SETTLE_SECONDS = 0
    settings.HOST_GUARD_POLICY = "kill"
    run = queued_run(job("victim", priority="low"))
    run.transition(RunState.QUEUED, RunState.RUNNING, worker_host=host_guard.HOSTNAME, started_at=timezone.now())
    host_guard.HostGuard(["default"], probe=lambda: 10.0).step()
    assert admission.kill_reason(run.pk).startswith(host_guard.HOST_KILL_PREFIX)


@pytest.mark.nomysql  # the fake worker below talks to the SQLite test database
def test_orphans_of_a_dead_worker_are_reaped(job, redis_client, tmp_path):
    run = queued_run(job("orphaned"))
    # A "worker" that starts a tagged script and dies at once, like a SIGKILLed worker.
    code = ("import os, subprocess, sys; from slots import procs; "
            f"env = dict(os.environ, {procs.TAG_VAR}=procs.run_tag({run.pk})); "
            "p = subprocess.Popen(['sleep', '60'], env=env, start_new_session=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(p.pid)")
    out = subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code], capture_output=True,
                         text=True, check=True, cwd=str(_root()),
                         env={**os.environ, "DATABASE_URL": f"sqlite:///{_db_name()}", "REDIS_URL": _redis_url(),
                              "DJANGO_SETTINGS_MODULE": "smartcron_project.settings"})
    child = int(out.stdout.split()[-1])
    assert pids_alive([child]) == [child]
    assert run.pk in procs.reap_orphans()
    wait_for(lambda: not pids_alive([child]), 5, message="the orphan to die")


def _db_name() -> str:
    from django.db import connection

    return connection.settings_dict["NAME"]


def _redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def test_kill_run_processes_finds_the_whole_tree(redis_client):
    script = "sleep 60 & setsid sleep 60 & wait"
    env = dict(os.environ, **{procs.TAG_VAR: procs.run_tag(424242)})
    leader = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)
    wait_for(lambda: len([t for t in procs.tagged_processes() if t.run_id == 424242]) >= 3, 5)
    pids = [t.pid for t in procs.tagged_processes() if t.run_id == 424242]
    assert procs.kill_run_processes(424242) >= 3
    leader.wait(5)
    wait_for(lambda: not pids_alive(pids), 5, message="the whole tree to die")


# --- visibility ----------------------------------------------------------------------------------
def test_slot_usage_and_slot_status(job, redis_client):
    big = job("big", expected_memory_mb=700)
    running = queued_run(big, 5)
    assert admission.admit(running).admitted
    waiting = queued_run(job("small", priority="high"), 1)
    ExecutionSlot.objects.filter(name="default").update(max_concurrent=1)
    waiting.job.slot.refresh_from_db()
    assert admission.admit(waiting).waiting
    from slots.status import slot_usage

    default = next(s for s in slot_usage() if s["slot"] == "default")
    assert default["running_count"] == 1 and default["memory_in_use_mb"] == 700.0
    assert default["running"][0]["job"] == "big"
    assert default["waiting"][0]["job"] == "small" and default["waiting"][0]["position"] == 0

    out = StringIO()
    call_command("slot_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert {s["slot"] for s in data["slots"]} >= {"default", "heavy", "light"}
    out = StringIO()
    call_command("slot_status", "--slot", "default", stdout=out)
    assert "default" in out.getvalue() and "1/1 running" in out.getvalue() and "small" in out.getvalue()
    help_text = subprocess.run([sys.executable, "manage.py", "slot_status", "--help"], capture_output=True, text=True,
                               cwd=str(_root()), check=True).stdout
    assert "--json" in help_text and "--slot" in help_text


def test_the_slot_admin_shows_live_usage(job, redis_client, admin_client):
    from slots import admin as slots_admin

    slots_admin._CACHE.clear()
    run = queued_run(job("shown", expected_memory_mb=321))
    assert admission.admit(run).admitted
    page = admin_client.get("/admin/slots/executionslot/").content.decode()
    assert "1/5" in page and "321/3072 MB" in page
    slot = ExecutionSlot.objects.get(name="default")
    page = admin_client.get(f"/admin/slots/executionslot/{slot.pk}/change/").content.decode()
    assert "shown" in page and "lease expires in" in page


def test_a_stuck_waiting_run_is_redispatched_and_a_chain_is_unique(job, redis_client, settings):
    run = queued_run(job("chain"))
    first = admission.claim_chain(run.pk, None)
    assert first and admission.claim_chain(run.pk, None) is None  # a second chain is refused
    assert admission.claim_chain(run.pk, first) == first
    assert admission.claim_chain(run.pk, "other") is None  # a superseded chain stops
    admission.clear_waiting(run.pk)
    assert admission.claim_chain(run.pk, first) == first  # an expired chain takes its run back


def test_start_founds_a_retry_chain_only_for_a_run_that_must_wait(job, redis_client):
    from jobs.tasks import start

    ExecutionSlot.objects.filter(name="default").update(max_concurrent=1)
    first, _ = services.create_run(job("one-place-a"), timezone.now() - dt.timedelta(seconds=2))
    second, _ = services.create_run(job("one-place-b"), timezone.now() - dt.timedelta(seconds=1))
    assert start(first.pk) == "admitted"
    assert redis_client.get(f"{admission.WAITING_PREFIX}{first.pk}") is None  # no chain, no record
    assert start(second.pk).startswith("waiting: slot default full")
    record = json.loads(redis_client.get(f"{admission.WAITING_PREFIX}{second.pk}"))
    assert record["chain"] and record["reason"].startswith("slot default full")  # founded with its reason
    assert admission.waiting_reasons([second.pk]) == {second.pk: record["reason"]}
    assert JobRun.objects.get(pk=second.pk).state == RunState.QUEUED
    assert JobRun.objects.get(pk=first.pk).state == RunState.ADMITTED


def test_admission_latencies_are_batched_but_read_back_complete(redis_client):
    admission.latencies_ms()  # earlier tests' samples out of the buffer
    redis_client.delete(admission.LATENCY_KEY)
    for ms in (1.5, 2.5, 3.5):
        admission.record_latency(ms)
    assert sorted(admission.latencies_ms()) == [1.5, 2.5, 3.5]  # this process's buffer included


def test_retry_delay_backs_off_to_the_maximum(settings):
    settings.ADMISSION_RETRY_MS = 200
    settings.ADMISSION_RETRY_MAX_MS = 2000
    delays = [admission.retry_delay_s(i) for i in range(10)]
    assert delays[0] == 0.2 and delays == sorted(delays) and delays[-1] == 2.0


def test_reconciler_requeues_an_admitted_run_whose_lease_expired(job, redis_client, settings, monkeypatch):
    from jobs import reconcile

    settings.LEASE_TTL_SECONDS = 0.3
    dispatched = []
    monkeypatch.setattr(services, "dispatch", dispatched.append)
    run = queued_run(job("never-started"))
    assert admission.admit(run).admitted
    time.sleep(0.4)
    result = reconcile.reconcile_once()
    assert result["reclaimed"] == 1
    run.refresh_from_db()
    assert run.state == RunState.QUEUED and [r.pk for r in dispatched] == [run.pk]



def test_a_waiting_runs_poll_says_still_full_only_while_there_is_no_room_for_it(store):
    def full(run_id: int, **kw) -> bool:
        args = {"max_jobs": 2, "memory_budget_mb": 1000, "cpu_budget": 100, "waiting_ttl": 30, **kw}
        return store.still_full("s", run_id, **args)

    assert take(store, 1, max_jobs=2).granted and take(store, 2, max_jobs=2).granted
    # Two runs in line, 2 ahead of 3.
    assert take(store, 3, max_jobs=2, prio=1).reason == "jobs"
    assert take(store, 4, max_jobs=2, prio=2).reason == "jobs"
    assert full(3) and full(4)
    assert not full(9)  # not in line: full admission decides (and puts it in line)
    store.release("s", 1, 1001)
    # One place: run 3 (ahead) would take it, so 4 still has no room; 3 must try for real.
    assert not full(3) and full(4)
    # Memory counts too: a 950 MB need does not fit next to the 100 MB still held.
    assert take(store, 5, max_jobs=3, mem=950, prio=0).reason == "memory"
    assert full(5, max_jobs=3)
    assert not full(5, max_jobs=3, memory_budget_mb=2000)


def test_a_finished_script_frees_its_place_but_keeps_its_job_instance(store):
    assert take(store, 1, max_jobs=1, job_id=5, max_instances=1).granted
    assert store.free_place("s", 1, job_id=5, ttl=30)
    assert store.usage("s").holders == [] and store.job_instances(5) == [1]
    assert take(store, 2, max_jobs=1, job_id=5, max_instances=1).reason == "instances"  # its row is not closed yet
    assert take(store, 3, max_jobs=1, job_id=6).granted  # but the slot place is free
    take(store, 4, ttl=0.2, job_id=7)
    time.sleep(0.3)
    assert not store.free_place("s", 4, job_id=7, ttl=30)  # an expired instance is not revived
    assert store.job_instances(7) == []


def test_release_wakes_the_waiting_runs_the_room_fits(store, slots, monkeypatch):
    slot = ExecutionSlot.objects.create(name="wake", max_concurrent=3, memory_budget_mb=1000, cpu_percent=100)
    take(store, 1, slot="wake", mem=500, max_jobs=2, budget=1000)
    take(store, 6, slot="wake", mem=100, max_jobs=2, budget=1000)
    # In line (the slot is full): a big one, two small ones, one more.
    for run_id, mem, prio in ((2, 800, 0), (3, 200, 1), (4, 200, 2), (5, 200, 3)):
        assert take(store, run_id, slot="wake", mem=mem, max_jobs=2, budget=1000, prio=prio).reason == "jobs"
    store.release("wake", 6, 1006)
    # Room for two more runs and 500 MB: the big one does not fit, the two small ones do.
    woken = []
    monkeypatch.setattr(admission, "wake", woken.extend)
    assert admission.wake_after_release("wake", None, store) == [3, 4] and woken == [3, 4]
    # Woken and not back yet: they count as taking the room, and are not woken twice.
    assert admission.wake_after_release("wake", None, store) == []
    store.woken_back("wake", 3)  # its attempt failed (say): it may be woken again
    assert admission.runs_that_fit(slot, store) == [3]
    assert admission.runs_that_fit(slot, store) == []
    # A mark lasts a couple of seconds at most: a lost wake is not lost for long.
    time.sleep(2.1)
    assert store.fits("wake", max_jobs=3, memory_budget_mb=1000, cpu_budget=100, mark_s=0.1) == [3, 4]


def test_link_cache_sees_changes_of_this_and_other_processes(make_job, redis_client, monkeypatch):
    a, b, c = make_job("lk-a"), make_job("lk-b"), make_job("lk-c")
    assert not dependencies.has_links(a.pk) and dependencies.links_of(a) == []
    # This process: a saved link applies at once (the signal drops the cached copy).
    JobDependency.objects.create(job=a, depends_on=b, kind=JobDependency.Kind.OPTIONAL)
    assert dependencies.has_links(a.pk) and dependencies.has_links(b.pk)
    assert [d.depends_on_id for d in dependencies.links_of(a)] == [b.pk]
    assert dependencies.related_job_ids(b.pk) == sorted([a.pk, b.pk])
    # Another process's change (no signal here): the generation it bumped makes the copy reload
    # once the copy's time is up.
    monkeypatch.setattr(dependencies, "LINKS_CACHE_SECONDS", 0.05)
    assert not dependencies.has_links(c.pk)
    JobDependency.objects.bulk_create([JobDependency(job=c, depends_on=b, kind=JobDependency.Kind.BLOCKING)])
    assert not dependencies.has_links(c.pk)  # still the cached copy
    redis_client.incr(dependencies.LINKS_GENERATION_KEY)
    time.sleep(0.06)
    assert dependencies.has_links(c.pk)
    # A change that bumped nothing (a queryset update) is picked up by the periodic reload.
    JobDependency.objects.filter(job=c).update(kind=JobDependency.Kind.OPTIONAL)
    time.sleep(0.06)
    assert dependencies.related_job_ids(c.pk) == sorted([b.pk, c.pk])  # still the old (blocking) kind
    monkeypatch.setattr(dependencies, "LINKS_RELOAD_SECONDS", 0.05)
    time.sleep(0.06)
    assert dependencies.related_job_ids(c.pk) == [c.pk]  # now c merely follows b
    assert dependencies.related_job_ids(b.pk) == sorted([a.pk, b.pk, c.pk])
    assert [row[2] for row in dependencies.link_rows() if row[0] == c.pk] == [JobDependency.Kind.OPTIONAL]
    dependencies._links_cache.clear()  # the next test's database starts empty
