"""Query-string filters, validated: a bad value is a 400 naming the parameter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError

from jobs.models import Alert, Job, JobRun, Priority, RunState

MAX_ID = 2**63 - 1
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Params:
    """Typed access to ``request.query_params``; collects every error before raising."""

    def __init__(self, query) -> None:
        self.query = query
        self.errors: dict[str, list[str]] = {}

    def _fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    def raw(self, name: str) -> str | None:
        value = self.query.get(name)
        return None if value is None or value == "" else value

    def bool(self, name: str) -> bool | None:
        value = self.raw(name)
        if value is None:
            return None
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self._fail(name, f"must be true or false, got {value[:40]!r}")
        return None

    def choice(self, name: str, choices: Iterable[str], *, many: bool = False) -> list[str] | None:
        """One value, or a comma-separated list when ``many``."""
        value = self.raw(name)
        if value is None:
            return None
        allowed = list(choices)
        values = [v.strip() for v in value.split(",")] if many else [value]
        bad = [v for v in values if v not in allowed]
        if bad:
            self._fail(name, f"{bad[0][:40]!r} is not one of: {', '.join(allowed)}")
            return None
        return values

    def id(self, name: str) -> int | None:
        value = self.raw(name)
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_ID:
            self._fail(name, f"must be a positive integer id, got {value[:40]!r}")
            return None
        return int(value)

    def datetime(self, name: str) -> dt.datetime | None:
        value = self.raw(name)
        if value is None:
            return None
        try:
            parsed = parse_datetime(value)
        except ValueError:
            parsed = None
        if parsed is None:
            self._fail(name, f"must be an ISO 8601 date-time such as 2025-01-31T08:00:00Z, got {value[:40]!r}")
            return None
        # A date-time without an offset is taken as UTC, the time zone of the whole system.
        return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=dt.UTC)

    def text(self, name: str, max_length: int = 200) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if len(value) > max_length or "\x00" in value:
            self._fail(name, f"must be at most {max_length} characters of text")
            return None
        return value

    def texts(self, name: str, max_length: int = 50) -> list[str]:
        values = [v for v in self.query.getlist(name) if v]
        for v in values:
            if len(v) > max_length or "\x00" in v:
                self._fail(name, f"must be at most {max_length} characters of text")
                return []
        return values

    def check(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def filter_jobs(qs: QuerySet[Job], query) -> QuerySet[Job]:
    """enabled, status, slot, category, priority, health, schedule_type, tag (repeatable: any), name, search."""
    p = Params(query)
    enabled = p.bool("enabled")
    status = p.choice("status", Job.Status.values, many=True)
    category = p.choice("category", Job.Category.values, many=True)
    priority = p.choice("priority", Priority.values, many=True)
    health = p.choice("health", Job.Health.values, many=True)
    schedule_type = p.choice("schedule_type", Job.ScheduleType.values, many=True)
    slot = p.text("slot", 50)
    name = p.text("name", 200)
    search = p.text("search", 200)
    tags = p.texts("tag")
    p.check()
    if enabled is not None:
        qs = qs.filter(enabled=enabled)
    if status:
        qs = qs.filter(status__in=status)
    if category:
        qs = qs.filter(category__in=category)
    if priority:
        qs = qs.filter(priority__in=priority)
    if health:
        qs = qs.filter(health__in=health)
    if schedule_type:
        qs = qs.filter(schedule_type__in=schedule_type)
    if slot:
        qs = qs.filter(slot__name=slot)
    if name:
        qs = qs.filter(name=name)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search) | Q(script_path__icontains=search))
    if tags:
        # A subquery, not a join: a job with two matching tags must not be listed twice.
        qs = qs.filter(pk__in=Job.tags.through.objects.filter(tag__name__in=tags).values("job_id"))
    return qs


def filter_runs(qs: QuerySet[JobRun], query) -> QuerySet[JobRun]:
    """job, state (comma-separated), trigger, slot, since/until (on scheduled_for)."""
    p = Params(query)
    job = p.id("job")
    state = p.choice("state", RunState.values, many=True)
    trigger = p.choice("trigger", JobRun.Trigger.values, many=True)
    slot = p.text("slot", 50)
    since = p.datetime("since")
    until = p.datetime("until")
    p.check()
    if job is not None:
        qs = qs.filter(job_id=job)
    if state:
        from api.status import runs_in_states

        qs = qs.filter(pk__in=runs_in_states(state).values("pk")) if len(state) > 1 else qs.filter(state=state[0])
    if trigger:
        qs = qs.filter(trigger__in=trigger)
    if slot:
        qs = qs.filter(slot_name=slot)
    if since:
        qs = qs.filter(scheduled_for__gte=since)
    if until:
        qs = qs.filter(scheduled_for__lt=until)
    return qs


def filter_alerts(qs: QuerySet[Alert], query) -> QuerySet[Alert]:
    """open, acknowledged, severity, type, job."""
    p = Params(query)
    is_open = p.bool("open")
    acknowledged = p.bool("acknowledged")
    severity = p.choice("severity", Alert.Severity.values, many=True)
    type_ = p.choice("type", Alert.Type.values, many=True)
    job = p.id("job")
    p.check()
    if is_open is not None:
        qs = qs.filter(resolved_at__isnull=is_open)
    if acknowledged is not None:
        qs = qs.filter(acknowledged_at__isnull=not acknowledged)
    if severity:
        qs = qs.filter(severity__in=severity)
    if type_:
        qs = qs.filter(type__in=type_)
    if job is not None:
        qs = qs.filter(job_id=job)
    return qs
