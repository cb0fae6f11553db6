"""Hot-path statements built once (jobs.queries, JobRun.transition) give what the ORM gives."""

import datetime as dt

import pytest
from django.db import transaction
from django.db.models import F

from jobs import queries
from jobs.models import Job, JobRun, RunState

pytestmark = pytest.mark.django_db


def concrete(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_prepared_run_query_matches_the_orm(make_job):
    job = make_job("prep", environment={"A": "1"})
    planned = dt.datetime(2026, 3, 29, 1, 30, 7, 250000, tzinfo=dt.UTC)
    run = JobRun.objects.create(job=job, scheduled_for=planned, slot_name=job.slot.name, output_tail="tail\u00e9")
    for _ in range(2):  # compiled on the first call, reused on the second
        fast = queries.run_with_job.first(run.pk)
        orm = JobRun.objects.select_related("job", "job__slot").get(pk=run.pk)
        assert concrete(fast) == concrete(orm)
        assert concrete(fast.job) == concrete(orm.job)
        assert concrete(fast.job.slot) == concrete(orm.job.slot)
        assert fast.scheduled_for == planned and fast.scheduled_for.tzinfo is not None
        assert fast.job.environment == {"A": "1"}
        assert fast._state.db == "default" and not fast._state.adding
    assert queries.run_with_job.first(run.pk + 10_000) is None


def test_prepared_query_falls_back_to_the_orm_when_it_has_more_parameters(make_job):
    job = make_job("prep2")
    run = JobRun.objects.create(job=job, scheduled_for=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    two = queries.Prepared(lambda pk: JobRun.objects.filter(pk=pk, state__in=[RunState.PENDING, RunState.QUEUED]))
    assert two.first(run.pk).pk == run.pk
    run.transition(RunState.PENDING, RunState.RUNNING)
    assert two.first(run.pk) is None


def test_transition_is_fenced_and_writes_like_an_update(make_job):
    job = make_job("fence")
    run = JobRun.objects.create(job=job, scheduled_for=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    started = dt.datetime(2026, 1, 1, 0, 0, 0, 4000, tzinfo=dt.UTC)
    assert run.transition((RunState.PENDING, RunState.QUEUED), RunState.RUNNING, started_at=started, pid=42,
                          worker_host="h", queue_wait_s=0.004)
    assert not run.transition(RunState.PENDING, RunState.CANCELLED)  # moved on: refused, nothing written
    stored = JobRun.objects.get(pk=run.pk)
    assert (stored.state, stored.started_at, stored.pid, stored.worker_host) == (RunState.RUNNING, started, 42, "h")
    assert stored.queue_wait_s == pytest.approx(0.004)
    with transaction.atomic():
        assert run.transition(RunState.RUNNING, RunState.SUCCEEDED, exit_code=0, error="", output_tail="ok\n")
    stored = JobRun.objects.get(pk=run.pk)
    assert (stored.state, stored.exit_code, stored.output_tail) == (RunState.SUCCEEDED, 0, "ok\n")


def test_update_row_takes_plain_values_fast_and_expressions_through_the_orm(make_job):
    job = make_job("rowupd")
    when = dt.datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    assert queries.update_row(Job, job.pk, {"last_run_at": when, "last_state": "succeeded",
                                            "consecutive_failures": 0}) == 1
    assert queries.update_row(Job, job.pk, {"consecutive_failures": F("consecutive_failures") + 2}) == 1
    assert queries.update_row(Job, job.pk + 999, {"last_state": "failed"}) == 0
    stored = Job.objects.get(pk=job.pk)
    assert (stored.last_run_at, stored.last_state, stored.consecutive_failures) == (when, "succeeded", 2)


def test_prepared_values_match_the_orm(make_job):
    from jobs.models import Alert

    job, other = make_job("vals"), make_job("vals2")
    Alert.objects.create(job=job, type=Alert.Type.FAILURE, severity=Alert.Severity.ERROR, message="m")
    Alert.objects.create(job=job, type=Alert.Type.TIMEOUT, severity=Alert.Severity.WARNING, message="m",
                         resolved_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    Alert.objects.create(job=other, type=Alert.Type.MISSED, severity=Alert.Severity.WARNING, message="m")
    for _ in range(2):
        assert dict(queries.open_alerts.rows(job.pk)) == {Alert.Type.FAILURE: Alert.Severity.ERROR}
    assert queries.open_alerts.rows(job.pk + 999) == []
    stamps = queries.PreparedValues(lambda pk: Alert.objects.filter(job_id=pk).order_by("pk")
                                    .values_list("resolved_at", "message"))
    assert stamps.rows(job.pk) == list(Alert.objects.filter(job_id=job.pk).order_by("pk")
                                       .values_list("resolved_at", "message"))
    assert stamps.rows(job.pk)[1][0] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # converters applied
