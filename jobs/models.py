"""The job registry: what runs, when, where, and what happened."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs import schedule as sched


class Priority(models.TextChoices):
    CRITICAL = "critical", "Critical"
    HIGH = "high", "High"
    MEDIUM = "medium", "Medium"
    LOW = "low", "Low"


# Lower rank = admitted first.
PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}


class JobQuerySet(models.QuerySet):
    def schedulable(self) -> JobQuerySet:
        """Jobs that beat should tick."""
        return self.filter(enabled=True, status__in=Job.RUNNABLE_STATUSES).exclude(
            schedule_type=Job.ScheduleType.MANUAL
        )


def validate_weight(value: float) -> None:
    if not 0.1 <= float(value) <= 2.0:
        raise ValidationError(f"must be between 0.1 and 2.0, got {value}")


class Job(models.Model):
    class Category(models.TextChoices):
        BACKUP = "backup"
        REPORTING = "reporting"
        SYNC = "sync"
        CLEANUP = "cleanup"
        MONITORING = "monitoring"
        MAINTENANCE = "maintenance"
        QUEUE = "queue"
        OTHER = "other"

    class Status(models.TextChoices):
        ACTIVE = "active"
        TESTING = "testing"
        PAUSED = "paused"
        DISABLED = "disabled"

    class Interpreter(models.TextChoices):
        AUTO = "", "Detect"
        PHP = "php"
        BASH = "bash"
        SH = "sh"
        PYTHON = "python"
        NODE = "node"
        PERL = "perl"
        RUBY = "ruby"
        EXECUTABLE = "executable", "Executable (run directly)"

    class ScheduleType(models.TextChoices):
        CRON = "cron"
        INTERVAL = "interval"
        DAILY = "daily"
        WEEKLY = "weekly"
        MANUAL = "manual"

    class OverlapPolicy(models.TextChoices):
        ALLOW = "allow", "Allow (up to max instances)"
        FORBID = "forbid", "Forbid (skip the tick, recorded)"
        REPLACE = "replace", "Replace (stop the running one)"
        QUEUE = "queue", "Queue one"

    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        HEALTHY = "healthy"
        WARNING = "warning"
        CRITICAL = "critical"

    RUNNABLE_STATUSES = (Status.ACTIVE, Status.TESTING)
    # Fields an operator may set by hand; auto-discovery never overwrites those listed
    # in ``manual_fields``.
    OPERATOR_FIELDS = (
        "description", "category", "priority", "status", "enabled", "interpreter", "args",
        "working_dir", "schedule_type", "cron_expression", "interval_seconds", "daily_at",
        "weekday", "wait_seconds", "timezone", "slot", "cpu_weight", "memory_weight",
        "timeout_seconds", "memory_limit_mb", "expected_duration_s", "expected_memory_mb",
        "max_retries", "start_window_seconds", "overlap_policy", "max_instances", "pinned",
    )

    name = models.CharField(
        max_length=200, unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                                   "letters, digits, '.', '_', ':' and '-' only, starting with a letter or digit")],
    )
    description = models.TextField(blank=True)
    category = models.CharField(max_length=20, choices=Category.choices, default=Category.OTHER)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.MEDIUM)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    enabled = models.BooleanField(default=True)
    tags = models.ManyToManyField("Tag", blank=True, related_name="jobs")

    script_path = models.CharField(max_length=1024, help_text="Absolute path below an allowed script root.")
    interpreter = models.CharField(max_length=12, choices=Interpreter.choices, default=Interpreter.AUTO, blank=True)
    args = models.CharField(max_length=1024, blank=True, help_text="Arguments, shell-quoted (no shell is used).")
    working_dir = models.CharField(max_length=1024, blank=True)
    environment = models.JSONField(default=dict, blank=True, help_text="Extra environment variables.")

    schedule_type = models.CharField(max_length=10, choices=ScheduleType.choices, default=ScheduleType.CRON)
    cron_expression = models.CharField(max_length=120, blank=True)
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    daily_at = models.TimeField(null=True, blank=True, help_text="For daily and weekly schedules.")
    weekday = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(6)], help_text="0=Monday .. 6=Sunday (weekly)."
    )
    wait_seconds = models.PositiveSmallIntegerField(
        default=0, validators=[MaxValueValidator(59)], help_text="Second of the minute the run starts at (0-59)."
    )
    timezone = models.CharField(max_length=64, default="UTC")

    slot = models.ForeignKey("slots.ExecutionSlot", on_delete=models.PROTECT, related_name="jobs")
    cpu_weight = models.FloatField(default=1.0, validators=[validate_weight])
    memory_weight = models.FloatField(default=1.0, validators=[validate_weight])
    timeout_seconds = models.PositiveIntegerField(default=3600, validators=[MinValueValidator(1)])
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True, help_text="Kill above this (whole tree).")
    expected_duration_s = models.FloatField(default=60.0, validators=[MinValueValidator(0.0)])
    expected_memory_mb = models.FloatField(default=128.0, validators=[MinValueValidator(0.0)])
    max_retries = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(20)])
    retry_backoff_seconds = models.PositiveIntegerField(default=30)
    start_window_seconds = models.PositiveIntegerField(
        default=300, help_text="How long after its planned second a run may still start."
    )
    overlap_policy = models.CharField(max_length=10, choices=OverlapPolicy.choices, default=OverlapPolicy.FORBID)
    max_instances = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    pinned = models.BooleanField(default=False, help_text="The load planner never moves a pinned job.")
    run_as_user = models.CharField(max_length=64, blank=True)
    circuit_breaker_threshold = models.PositiveSmallIntegerField(
        null=True, blank=True,
        help_text="Pause the job after this many failures in a row (empty: SMARTCRON_BREAKER_THRESHOLD; 0: never).")
    circuit_opened_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the circuit breaker paused this job (cleared by circuit_breaker --reset).")

    # Baseline (learned from successful runs) and health.
    baseline_runs = models.PositiveIntegerField(default=0)
    baseline_duration_p50 = models.FloatField(null=True, blank=True)
    baseline_duration_p95 = models.FloatField(null=True, blank=True)
    baseline_duration_mad = models.FloatField(null=True, blank=True)
    baseline_memory_p50 = models.FloatField(null=True, blank=True)
    baseline_memory_p95 = models.FloatField(null=True, blank=True)
    baseline_memory_mad = models.FloatField(null=True, blank=True)
    baseline_updated_at = models.DateTimeField(null=True, blank=True)
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_state = models.CharField(max_length=16, blank=True)
    # Maintained by the watchdog (jobs.health): the planned second of the next run that
    # is due after the latest existing one, and when it counts as overdue without a run.
    next_due_at = models.DateTimeField(null=True, blank=True)
    overdue_at = models.DateTimeField(null=True, blank=True)

    schedule_since = models.DateTimeField(
        null=True, blank=True, help_text="When the current beat schedule took effect (missed-tick checks start here)."
    )
    auto_discovered = models.BooleanField(default=False)
    script_missing = models.BooleanField(default=False)
    manual_fields = models.JSONField(default=list, blank=True, help_text="Fields set by hand; discovery keeps them.")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "status"], name="job_enabled_status_idx")]

    def __str__(self) -> str:
        return self.name

    # --- schedule -------------------------------------------------------------------
    @property
    def schedulable(self) -> bool:
        return self.runnable and self.schedule_type != self.ScheduleType.MANUAL

    @property
    def runnable(self) -> bool:
        """Enabled and active (or testing): its runs may start."""
        return self.enabled and self.status in self.RUNNABLE_STATUSES

    def effective_cron(self) -> str | None:
        """The 5-field cron this job fires on (None for interval and manual jobs)."""
        if self.schedule_type == self.ScheduleType.CRON:
            return sched.normalize_cron(self.cron_expression)
        if self.schedule_type == self.ScheduleType.DAILY:
            return sched.daily_cron(self.daily_at or dt.time(0, 0))
        if self.schedule_type == self.ScheduleType.WEEKLY:
            return sched.weekly_cron(self.daily_at or dt.time(0, 0), self.weekday or 0)
        return None

    def beat_crontab(self) -> tuple[str, str] | None:
        """(cron, timezone) beat must tick on, or None when the job is not ticked."""
        if self.schedule_type == self.ScheduleType.MANUAL:
            return None
        if self.schedule_type == self.ScheduleType.INTERVAL:
            return sched.interval_crontab(int(self.interval_seconds or 60)), "UTC"
        return self.effective_cron(), self.timezone

    def planned_runs_for_tick(self, now: dt.datetime) -> list[dt.datetime]:
        """The planned seconds a beat tick arriving at ``now`` is responsible for."""
        if self.schedule_type == self.ScheduleType.INTERVAL:
            minute = sched.tick_minute(now)
            return list(sched.interval_points_between(
                int(self.interval_seconds), self.wait_seconds, minute, minute + dt.timedelta(minutes=1)))
        cron = self.effective_cron()
        if cron is None:
            return []
        fire = sched.cron_prev_fire(cron, self.timezone, now + sched.TICK_EARLY_TOLERANCE)
        if sched.is_dst_repeat(cron, self.timezone, fire):
            return []
        return [fire + dt.timedelta(seconds=self.wait_seconds)]

    def runs_to_plan_ahead(self, now: dt.datetime, ahead_s: int) -> list[dt.datetime]:
        """Planned seconds of the ``ahead_s`` seconds after the minute of a tick arriving at ``now``.

        A tick creates these too (idempotently: the next tick finds them), so the start of
        an every-minute job does not wait for the burst of ticks at :00.
        """
        if ahead_s <= 0:
            return []
        begin = sched.tick_minute(now) + dt.timedelta(minutes=1)
        end = begin + dt.timedelta(seconds=ahead_s)
        if self.schedule_type == self.ScheduleType.INTERVAL:
            return list(sched.interval_points_between(int(self.interval_seconds), self.wait_seconds, begin, end))
        cron = self.effective_cron()
        if cron is None:
            return []
        return [f + dt.timedelta(seconds=self.wait_seconds) for f in sched.cron_fires_between(cron, self.timezone,
                                                                                             begin, end)]

    def next_runs(self, count: int = 5, after: dt.datetime | None = None) -> list[dt.datetime]:
        start = after or timezone.now()
        out: list[dt.datetime] = []
        horizon = start + dt.timedelta(days=400)
        if self.schedule_type == self.ScheduleType.INTERVAL:
            it = sched.interval_points_between(int(self.interval_seconds), self.wait_seconds, start, horizon)
        elif self.effective_cron():
            it = (f + dt.timedelta(seconds=self.wait_seconds)
                  for f in sched.cron_fires_between(self.effective_cron(), self.timezone, start, horizon))
        else:
            return []
        for moment in it:
            out.append(moment)
            if len(out) >= count:
                break
        return out

    # --- expectations ------------------------------------------------------------------
    @property
    def expected_peak_mb(self) -> float:
        """Baseline p95 when learned, else the configured estimate times the memory weight."""
        if self.baseline_memory_p95 is not None and self.baseline_runs > 0:
            return float(self.baseline_memory_p95)
        return float(self.expected_memory_mb) * float(self.memory_weight)

    @property
    def expected_seconds(self) -> float:
        if self.baseline_duration_p95 is not None and self.baseline_runs > 0:
            return float(self.baseline_duration_p95)
        return float(self.expected_duration_s)

    # --- command line ------------------------------------------------------------------
    def resolved_script(self) -> Path:
        return Path(self.script_path).resolve()

    def command(self) -> list[str]:
        """The argv to execute (no shell)."""
        from jobs.interpreters import interpreter_argv

        script = str(self.resolved_script())
        return interpreter_argv(self.interpreter, script) + shlex.split(self.args or "")

    # --- validation --------------------------------------------------------------------
    def clean(self) -> None:
        errors: dict[str, list[str]] = {}

        def add(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        try:
            sched.validate_timezone(self.timezone)
        except sched.ScheduleError as exc:
            add("timezone", str(exc))
        if self.schedule_type == self.ScheduleType.CRON:
            try:
                self.cron_expression = sched.normalize_cron(self.cron_expression)
            except sched.ScheduleError as exc:
                add("cron_expression", str(exc))
        elif self.schedule_type == self.ScheduleType.INTERVAL:
            try:
                sched.validate_interval(self.interval_seconds, self.wait_seconds or 0)
            except sched.ScheduleError as exc:
                add("interval_seconds", str(exc))
        elif self.schedule_type in (self.ScheduleType.DAILY, self.ScheduleType.WEEKLY):
            if self.daily_at is None:
                add("daily_at", f"a time of day is required for a {self.schedule_type} schedule")
            if self.schedule_type == self.ScheduleType.WEEKLY and self.weekday is None:
                add("weekday", "a weekday (0=Monday .. 6=Sunday) is required for a weekly schedule")
        if self.wait_seconds is not None and not 0 <= self.wait_seconds <= 59:
            add("wait_seconds", f"must be between 0 and 59, got {self.wait_seconds}")
        for field in ("cpu_weight", "memory_weight"):
            value = getattr(self, field)
            if value is not None and not 0.1 <= float(value) <= 2.0:
                add(field, f"must be between 0.1 and 2.0, got {value}")
        if self.timeout_seconds and self.timeout_seconds > settings.MAX_JOB_TIMEOUT_SECONDS:
            add("timeout_seconds", f"must be at most {settings.MAX_JOB_TIMEOUT_SECONDS} (SMARTCRON_MAX_JOB_TIMEOUT), "
                                   f"got {self.timeout_seconds}")
        if self.script_path:
            from jobs.paths import PathNotAllowed, check_script_path

            try:
                check_script_path(self.script_path)
            except PathNotAllowed as exc:
                add("script_path", str(exc))
        if self.working_dir and not os.path.isabs(self.working_dir):
            add("working_dir", "must be an absolute path")
        try:
            shlex.split(self.args or "")
        except ValueError as exc:
            add("args", f"cannot be parsed: {exc}")
        if not isinstance(self.environment, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in (self.environment or {}).items()
        ):
            add("environment", "must be an object of string names to string values")
        if errors:
            raise ValidationError(errors)

    def mark_manual(self, fields: list[str] | set[str]) -> None:
        """Record fields an operator set by hand, so that discovery keeps them."""
        keep = set(self.manual_fields or [])
        keep.update(f for f in fields if f in self.OPERATOR_FIELDS)
        self.manual_fields = sorted(keep)


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)
    color = models.CharField(max_length=7, default="#607d8b",
                             validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "a colour like #1e88e5")])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RunState(models.TextChoices):
    PENDING = "pending", "Pending (waiting for its second)"
    QUEUED = "queued", "Queued (waiting for admission)"
    ADMITTED = "admitted", "Admitted (lease held)"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED_MEMORY = "killed_memory"
    LOST = "lost"
    SKIPPED = "skipped"
    MISSED = "missed"
    CANCELLED = "cancelled"


ACTIVE_STATES = (RunState.PENDING, RunState.QUEUED, RunState.ADMITTED, RunState.RUNNING)
LIVE_STATES = (RunState.ADMITTED, RunState.RUNNING)
FINAL_STATES = tuple(s for s in RunState if s not in ACTIVE_STATES)
FAILURE_STATES = (RunState.FAILED, RunState.TIMED_OUT, RunState.KILLED_MEMORY, RunState.LOST)


class RunQuerySet(models.QuerySet):
    def active(self) -> RunQuerySet:
        return self.filter(state__in=ACTIVE_STATES)

    def live(self) -> RunQuerySet:
        return self.filter(state__in=LIVE_STATES)

    def final(self) -> RunQuerySet:
        return self.filter(state__in=FINAL_STATES)


class JobRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        MANUAL = "manual"
        RETRY = "retry"
        DEPENDENCY = "dependency"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs")
    scheduled_for = models.DateTimeField(help_text="The planned second (UTC).")
    state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.PENDING)
    trigger = models.CharField(max_length=12, choices=Trigger.choices, default=Trigger.SCHEDULE)
    attempt = models.PositiveSmallIntegerField(default=1)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    slot_name = models.CharField(max_length=50, blank=True)
    expected_memory_mb = models.FloatField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    duration_s = models.FloatField(null=True, blank=True)
    queue_wait_s = models.FloatField(null=True, blank=True, help_text="Actual start minus planned second.")
    exit_code = models.IntegerField(null=True, blank=True)
    peak_memory_mb = models.FloatField(null=True, blank=True, help_text="Peak summed RSS of the whole process tree.")
    cpu_seconds = models.FloatField(null=True, blank=True)
    output_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128, null=True, blank=True, unique=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-scheduled_for"]
        constraints = [
            # One run per tick, whatever beat, a redelivery or a second beat does.
            models.UniqueConstraint(fields=["job", "scheduled_for"], name="jobrun_one_per_tick"),
        ]
        indexes = [
            models.Index(fields=["job", "-scheduled_for"], name="jobrun_job_sched_idx"),
            models.Index(fields=["state", "scheduled_for"], name="jobrun_state_sched_idx"),
            models.Index(fields=["finished_at"], name="jobrun_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job.name}@{self.scheduled_for:%Y-%m-%d %H:%M:%S} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def transition(self, from_states: tuple[str, ...] | str, to_state: str, **fields) -> bool:
        """Conditional state change: ``UPDATE ... WHERE id=run AND state IN from_states``.

        The run id plus its state is the fencing token: a worker that wakes up late
        cannot overwrite a run someone else already moved on.  Returns False (and
        changes nothing) if the run was no longer in one of ``from_states``.
        """
        if isinstance(from_states, str):
            from_states = (from_states,)
        n = _fenced_update(self.pk, from_states, {"state": to_state, **fields})
        if n == 1:
            self.state = to_state
            for key, value in fields.items():
                setattr(self, key, value)
            return True
        return False


def _fenced_update(pk: int, from_states: tuple[str, ...], values: dict) -> int:
    from jobs.queries import update_row

    return update_row(JobRun, pk, values, state_in=from_states)


class JobDependency(models.Model):
    class Kind(models.TextChoices):
        REQUIRED = "required", "Required (dependency's latest run succeeded recently)"
        OPTIONAL = "optional", "Optional (ordering only: wait while it runs)"
        BLOCKING = "blocking", "Blocking (never at the same time)"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependencies")
    depends_on = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependents")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.REQUIRED)
    within_seconds = models.PositiveIntegerField(
        default=86400, help_text="Required: the dependency's success must be this recent."
    )
    trigger_on_success = models.BooleanField(default=False, help_text="Start this job when the dependency succeeds.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "depends_on"], name="jobdependency_unique_pair"),
            models.CheckConstraint(condition=~Q(job=models.F("depends_on")), name="jobdependency_not_self"),
        ]

    def __str__(self) -> str:
        return f"{self.job} {self.kind} {self.depends_on}"

    def save(self, *args, **kwargs):
        self.full_clean()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if self.job_id and self.job_id == self.depends_on_id:
            raise ValidationError({"depends_on": "a job cannot depend on itself"})
        if self.job_id and self.depends_on_id and self.kind != self.Kind.BLOCKING:
            cycle = find_cycle(self.job_id, self.depends_on_id, exclude_pk=self.pk)
            if cycle:
                names = dict(Job.objects.filter(pk__in=cycle).values_list("pk", "name"))
                path = " -> ".join(names[pk] for pk in cycle)
                raise ValidationError({"depends_on": f"this dependency would create a cycle: {path}"})


def find_cycle(job_id: int, depends_on_id: int, exclude_pk: int | None = None) -> list[int] | None:
    """If adding job -> depends_on closes a cycle, return it as [job, depends_on, ..., job].

    Blocking links are mutual exclusion, not ordering, so they cannot form cycles.
    """
    edges: dict[int, list[int]] = {}
    qs = JobDependency.objects.exclude(kind=JobDependency.Kind.BLOCKING)
    if exclude_pk:
        qs = qs.exclude(pk=exclude_pk)
    for a, b in qs.values_list("job_id", "depends_on_id"):
        edges.setdefault(a, []).append(b)
    # Depth-first search from depends_on back to job.
    stack = [(depends_on_id, [job_id, depends_on_id])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node == job_id:
            return path
        if node in seen:
            continue
        seen.add(node)
        for nxt in edges.get(node, []):
            stack.append((nxt, path + [nxt]))
    return None


class Alert(models.Model):
    class Type(models.TextChoices):
        FAILURE = "failure"
        TIMEOUT = "timeout"
        HIGH_MEMORY = "high_memory"
        HIGH_DURATION = "high_duration"
        TOO_FAST = "too_fast"
        CONSECUTIVE_FAILURES = "consecutive_failures"
        ANOMALY = "anomaly"
        MISSED = "missed"
        LOST = "lost"
        CIRCUIT_OPEN = "circuit_open"
        PEER = "peer"
        SYSTEM = "system"

    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"
        CRITICAL = "critical"

    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    run = models.ForeignKey(JobRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    type = models.CharField(max_length=24, choices=Type.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    message = models.TextField()
    count = models.PositiveIntegerField(default=1)
    # "job:type" while the alert is open, NULL once resolved: one open alert per job and
    # type, enforced by a unique index that works on SQLite and MySQL alike.
    dedup_key = models.CharField(max_length=120, null=True, blank=True, unique=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ack_note = models.TextField(blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]
        indexes = [models.Index(fields=["resolved_at", "-last_seen"], name="alert_open_idx")]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.type}: {self.message[:60]}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class NotificationAttempt(models.Model):
    """One try to deliver one notification of an alert over one channel (failures included)."""

    class Reason(models.TextChoices):
        NEW = "new"
        ESCALATED = "escalated"
        REMINDER = "reminder"
        RESOLVED = "resolved"
        TEST = "test"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notification_attempts")
    channel = models.CharField(max_length=20)
    target = models.CharField(max_length=500, blank=True, help_text="Recipients or URL (without credentials).")
    reason = models.CharField(max_length=10, choices=Reason.choices, default=Reason.NEW)
    attempt = models.PositiveSmallIntegerField(default=1)
    ok = models.BooleanField(default=False)
    status_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["alert", "-created_at"], name="notifattempt_alert_idx"),
                   models.Index(fields=["created_at"], name="notifattempt_created_idx")]

    def __str__(self) -> str:
        return f"{self.channel} {'ok' if self.ok else 'failed'} for alert {self.alert_id} (try {self.attempt})"


# --- Run statistics --------------------------------------------------------------------------
# Durations and peaks are counted into fixed log-scale bins (a tiny histogram "sketch"), one
# integer column per bin, so that recording a run is a single UPDATE with F() increments
# (atomic, no read-modify-write) and a p95 over any set of rows is a SUM per column.
# Bin i holds values v with EDGES[i-1] <= v < EDGES[i]; bin 0 everything below EDGES[0], the
# last bin everything from EDGES[-1] up.  Edges grow by sqrt(2), so an interpolated
# percentile is within about +-19% of the exact one in the worst case (much closer in
# practice); observed maxima clamp the top.
DURATION_EDGES: tuple[float, ...] = tuple(0.05 * 2 ** (k / 2) for k in range(41))  # 50 ms .. 14.6 h
MEMORY_EDGES: tuple[float, ...] = tuple(2 ** (k / 2) for k in range(35))  # 1 MB .. 128 GB
DURATION_BIN_FIELDS: tuple[str, ...] = tuple(f"d{i:02d}" for i in range(len(DURATION_EDGES) + 1))
MEMORY_BIN_FIELDS: tuple[str, ...] = tuple(f"m{i:02d}" for i in range(len(MEMORY_EDGES) + 1))


def _histogram_base(name: str, field_class: type[models.Field]) -> type[models.Model]:
    """An abstract model with one counter column per histogram bin."""
    attrs: dict = {"__module__": __name__, "Meta": type("Meta", (), {"abstract": True})}
    for field in DURATION_BIN_FIELDS + MEMORY_BIN_FIELDS:
        attrs[field] = field_class(default=0)
    return type(name, (models.Model,), attrs)


_HistogramCounters = _histogram_base("_HistogramCounters", models.PositiveBigIntegerField)
# Per hour a bin never exceeds 720 runs (5 s minimum interval), so SMALLINT: half the row
# width, and the 24 h window query reads the whole (small) table on MySQL anyway.
_HourHistogramCounters = _histogram_base("_HourHistogramCounters", models.PositiveSmallIntegerField)

# Final states counted per job (column ``n_<state>``).
COUNTED_STATES: tuple[str, ...] = tuple(str(s) for s in FINAL_STATES)


class JobStats(_HistogramCounters):
    """All-time counters of one job (never recomputed from history, so pruning keeps them).

    They feed the Prometheus counters and histograms.  Also holds the baseline bookkeeping
    (successful runs since the last recompute) and the recent-window medians (trend).
    """

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="stats")
    runs_total = models.PositiveBigIntegerField(default=0)
    n_succeeded = models.PositiveBigIntegerField(default=0)
    n_failed = models.PositiveBigIntegerField(default=0)
    n_timed_out = models.PositiveBigIntegerField(default=0)
    n_killed_memory = models.PositiveBigIntegerField(default=0)
    n_lost = models.PositiveBigIntegerField(default=0)
    n_skipped = models.PositiveBigIntegerField(default=0)
    n_missed = models.PositiveBigIntegerField(default=0)
    n_cancelled = models.PositiveBigIntegerField(default=0)
    duration_count = models.PositiveBigIntegerField(default=0)
    duration_sum = models.FloatField(default=0.0)
    memory_count = models.PositiveBigIntegerField(default=0)
    memory_sum = models.FloatField(default=0.0)
    cpu_sum = models.FloatField(default=0.0)
    queue_wait_sum = models.FloatField(default=0.0)
    queue_wait_count = models.PositiveBigIntegerField(default=0)
    runs_since_baseline = models.PositiveIntegerField(default=0)
    recent_runs = models.PositiveSmallIntegerField(default=0)
    recent_duration_p50 = models.FloatField(null=True, blank=True)
    recent_memory_p50 = models.FloatField(null=True, blank=True)
    # Median of the baseline window without its newest TREND_WINDOW runs (set at each baseline
    # recompute): the trend compares recent runs with it, so a slowdown that the moving
    # baseline is busy absorbing still shows as "degraded" for a while.
    reference_duration_p50 = models.FloatField(null=True, blank=True)
    reference_memory_p50 = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "job stats"

    def __str__(self) -> str:
        return f"stats of job {self.job_id}"


class JobStatsHour(_HourHistogramCounters):
    """One job's runs that finished within one UTC hour: the rolling 24 h window is the sum of
    the last 24 rows, so it never scans the run history."""

    # No separate job_id index: with one, SQLite groups the window query by walking it over
    # every kept hour instead of range-scanning the window (3x slower at 1,000 jobs).  The
    # unique (hour, job) index serves both the window and the per-run upsert.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="stats_hours", db_index=False)
    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    runs = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0, help_text="failed, timed out, killed (memory) or lost")
    missed = models.PositiveIntegerField(default=0, help_text="skipped or missed")
    duration_count = models.PositiveIntegerField(default=0)
    duration_sum = models.FloatField(default=0.0)
    duration_max = models.FloatField(default=0.0)
    memory_count = models.PositiveIntegerField(default=0)
    memory_sum = models.FloatField(default=0.0)
    memory_max = models.FloatField(default=0.0)
    cpu_sum = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "job"], name="jobstatshour_one_per_hour")]

    def __str__(self) -> str:
        return f"stats of job {self.job_id} at {self.hour:%Y-%m-%d %H}:00"
